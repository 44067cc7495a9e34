"""Human-readable plans and values. Pure functions returning text with rich markup.

Secrets never reach this module as values: specs carry only salted digests of them,
and anything under a "password" key is shown as "(sensitive)".
"""

from __future__ import annotations

import re
from typing import Any

from virtplan.plan.changes import Action, FieldChange, Plan, ResourceChange
from virtplan.units import format_size

STYLES = {
    Action.CREATE: "green",
    Action.UPDATE: "yellow",
    Action.RESTART: "yellow",
    Action.REPLACE: "magenta",
    Action.DELETE: "red",
    Action.MIGRATE: "cyan",
}
SIZE_FIELDS = {"memory", "max_memory", "capacity"}


def value(field: str, v: Any) -> str:
    """One field value as a reviewer wants to read it."""
    if v is None:
        return "(none)"
    if field in SIZE_FIELDS and isinstance(v, int) and not isinstance(v, bool):  # a snapshot's memory is a flag
        return format_size(v)
    if isinstance(v, str) and field in ("disks", "nics", "reservations", "graphics"):
        return repr(v)  # not the field's value: what virtplan could not read in its place
    if field == "cloud_init":
        return f"seed digest {v[:12]}"
    if field == "disks":
        return "[" + ", ".join(_disk(d) for d in v) + "]" if v else "[]"
    if field == "nics":
        return "[" + ", ".join(_nic(n) for n in v) + "]" if v else "[]"
    if field == "unplugged":
        return "NICs " + ", ".join(v) + " off their network's bridge" if v else "all NICs on their network's bridge"
    if field == "reservations":
        return "[" + ", ".join(f"{r['ip']}={r['mac']}" for r in v) + "]" if v else "[]"
    if field == "image":
        return image_text(v)
    if field == "graphics":
        secret = ", password set" if v.get("password") else ""
        return f"{v.get('type')} on {v.get('listen')}{secret}"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, str):
        return repr(v)
    return str(v)


def image_text(image: dict[str, Any]) -> str:
    """A URL source as a plan shows it: `download 350 MiB from https://... (sha256 3f4a...)`,
    or `in the local cache` when it is there already (nothing is downloaded then)."""
    from virtplan.hosts.downloads import cached, partial

    digest = f"{image['algo']} {str(image['digest'])[:12]}..."
    size = format_size(image["length"]) if image.get("length") else "size unknown"
    if cached(image["algo"], image["digest"]):
        return f"{image['url']} ({size}, in the local cache; {digest})"
    resume = partial(image["algo"], image["digest"])
    left = f", {format_size(resume)} already here: resumed" if resume else ""
    return f"download {size} from {image['url']} ({digest}{left})"


def _disk(d: dict[str, Any]) -> str:
    boot = f", boot {d['boot']}" if d.get("boot") else ""
    return f"{d.get('volume')} ({d.get('bus')}{boot})"


def _nic(n: dict[str, Any]) -> str:
    where = n.get("network") or f"bridge {n.get('bridge')}"
    return f"{where} {n.get('mac')} ({n.get('model')})"


_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape(text: str) -> str:
    """User or libvirt text made safe to embed in rich markup, printed exactly as it is.

    rich reads `[` followed by a letter, `#`, `/` or `@` as the start of a tag and a
    backslash only just before one: exactly those brackets are escaped, with their
    backslashes doubled, as rich's own `rich.markup.escape` does (this module does not
    import rich). Like rich, a trailing backslash is doubled so that it cannot escape a tag
    that follows. Lines that carry libvirt's messages are built as rich `Text` instead
    (`virtplan.cli.output`), which needs no escaping at all."""
    out = _TAG.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)
    if out.endswith("\\") and not out.endswith("\\\\"):
        out += "\\"
    return out


def field_line(fc: FieldChange, action: Action) -> str:
    if action == Action.CREATE and fc.field == "image":
        return f"image: {escape(value(fc.field, fc.after))}"
    if action == Action.CREATE:
        return f"{fc.field} = {escape(value(fc.field, fc.after))}"
    before, after = escape(value(fc.field, fc.before)), escape(value(fc.field, fc.after))
    if before == after and isinstance(fc.before, int) and isinstance(fc.after, int):
        before, after = f"{fc.before} B", f"{fc.after} B"  # a difference below the display precision
    elif before == after and fc.field == "graphics":
        after += " (password changed)"  # the digests differ; neither is shown
    return f"{fc.field}: {before} -> {after}  [dim]({fc.policy})[/dim]"


def summary(plan: Plan) -> str:
    c = plan.counts()
    return (
        f"Plan: {c[Action.CREATE]} to add, {c[Action.UPDATE]} to change live, {c[Action.RESTART]} to restart, "
        f"{c[Action.REPLACE]} to replace, {c[Action.DELETE]} to destroy"
        + (f", {c[Action.MIGRATE]} to move." if c[Action.MIGRATE] else ".")
    )


def change_lines(change: ResourceChange) -> list[str]:
    style = STYLES[change.action]
    lines = [
        f"  [{style}]{change.symbol:>3} {change.kind} {escape(change.key)}[/{style}]"
        f"  [dim]{change.action.value}: {escape(change.why)}[/dim]"
    ]
    if change.placement and change.action == Action.CREATE:
        lines.append(f"        [dim]placement: {escape(change.placement)}[/dim]")
    if change.move:
        lines += [f"        {escape(line)}" for line in move_lines(change.move)]
    shown = [fc for fc in change.changes if not (change.action == Action.CREATE and fc.after is None)]
    lines += [f"        {field_line(fc, change.action)}" for fc in shown]
    if change.destructive:
        lines.append(f"        [bold red]! destructive: {escape(change.destructive)}[/bold red]")
    return lines


def move_lines(move: dict[str, Any]) -> list[str]:
    """What a VM's move does, as a reviewer reads it: how, what it copies, what goes after."""
    source = move.get("source", "?")
    if move.get("live"):
        how = "live migration (peer to peer), its disks copied while it runs"
    else:
        stop = "stopped, " if move.get("stop") else ""
        how = f"{stop}disk files copied from {source} through this machine, defined here"
        if move.get("start"):
            how += ", then started"
    lines = [f"from {source}: {how}"]
    disks = move.get("disks") or []
    if disks:
        parts = [f"{d['key']} ({format_size(int(d.get('bytes') or 0))}{', made here' if d.get('create') else ''})"
                 for d in disks]  # fmt: skip
        lines.append(f"cost: {format_size(int(move.get('copy_bytes') or 0))} of disk to copy: {', '.join(parts)}")
    else:
        lines.append("cost: no disk to copy")
    if move.get("cleanup"):
        lines.append(f"then deleted on {source}: {', '.join(a.split('/', 2)[2] for a in move['cleanup'])}")
    return lines


def plan_text(plan: Plan) -> str:
    """The whole plan, grouped by host, ending with the summary line."""
    if plan.empty:
        return "No changes. The hosts match the stack."
    lines = []
    for host, uri in plan.hosts.items():
        changes = plan.for_host(host)
        if not changes:
            continue
        lines.append(f"[bold]Host {host}[/bold] [dim]({uri})[/dim]")
        for change in changes:
            lines += change_lines(change)
        lines.append("")
    lines.append(f"[bold]{summary(plan)}[/bold]")
    return "\n".join(lines)
