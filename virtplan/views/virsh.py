"""The `virsh` commands equivalent to each planned change (`virtplan plan --commands`).

For every change this prints the shell form of the operations `apply` runs
(`virtplan.apply.steps`): the same XML documents (written with here-documents), the same
order, the same graceful stop. Run against a fresh host, the commands produce the same
libvirt state as `apply` (the integration tests replay them with virsh and compare).
Set LIBVIRT_DEFAULT_URI (the script does, per host) and run them in an empty folder:
XML files and seed images are written there.

Two things have no virsh equivalent and appear as comments: virtplan's own ownership record
of storage pools and volumes (libvirt cannot tag those), and secrets, which are never
printed: "(sensitive)" marks where a password goes.
"""

from __future__ import annotations

from virtplan.apply.steps import Context, shell_commands
from virtplan.apply.steps.shell import comment, q
from virtplan.documents.render import Renderer
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import Records
from virtplan.model import Stack
from virtplan.plan.changes import Plan


def plan_commands(plan: Plan, stack: Stack, renderer: Renderer, observed: dict[str, HostState],
                  store: Records) -> dict[str, list[str]]:  # fmt: skip
    """address -> the shell commands of that change, for every change of `plan`. The
    renderer is left as it was (a replacement renders as a new object while printed)."""
    contexts = {host: Context.at(stack, renderer, state, store, plan, observed) for host, state in observed.items()}
    out: dict[str, list[str]] = {}
    kept = dict(renderer.identities)
    try:
        for change in plan.changes:
            out[change.address] = shell_commands(change, contexts[change.host])
    finally:
        renderer.identities.clear()
        renderer.identities.update(kept)
    return out


def script(plan: Plan, commands: dict[str, list[str]]) -> str:
    """All commands as one shell script, grouped by host, each change introduced by a comment."""
    from virtplan.views.text import summary

    lines = [
        "#!/bin/sh",
        comment(f"virsh commands equivalent to `virtplan apply` of stack {plan.stack!r}."),
        comment(summary(plan)),
        "# Run in an empty folder: XML files and seed images are written there.",
        "set -eu",
        "",
    ]
    if plan.empty:
        return "\n".join([*lines[:2], "# No changes. The hosts match the stack.", ""])
    for host, uri in plan.hosts.items():
        changes = plan.for_host(host)
        if not changes:
            continue
        lines += [comment(f"--- host {host} ---"), f"export LIBVIRT_DEFAULT_URI={q(uri)}", ""]
        for change in changes:
            lines.append(comment(f"{change.symbol} {change.kind} {change.key}  ({change.action.value}: {change.why})"))
            if change.destructive:
                lines.append(comment(f"! destructive: {change.destructive}"))
            lines += commands.get(change.address, [])
            lines.append("")
    return "\n".join(lines)
