"""The Pulumi program: load the stack program for the current Pulumi stack and register it.

Configuration (namespace `virtplan`, declared in `Pulumi.yaml`):
- `program`: the stack program, relative to the project folder (default `stacks/<stack>.py`).
- `backend`: `native` (default; virtplan's dynamic providers) or `pulumi-libvirt`.
- `hosts`: host URI overrides, a list of `NAME=URI` (as the CLI's `--host`).
- `parallelism`: changes at once per host (overrides every host's `workers`).

Every declared resource becomes one Pulumi resource named `<host>/<key>`, depending on the
resources it refers to, so Pulumi orders creates and deletes as virtplan does. Invalid
configuration or stacks stop the program with one readable message before anything is
registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from virtplan.errors import VirtplanError
from virtplan.model import Stack, load_stack
from virtplan.plan.planner import ordered
from virtplan.pulumi.describe import describe, pulumi_name
from virtplan.pulumi.settings import Registered, Settings, read_settings


def load(settings: Settings) -> Stack:
    """The validated stack, with host overrides and parallelism applied."""
    if not settings.program.is_file():
        raise VirtplanError(
            f"no stack program {settings.program} for Pulumi stack {pulumi.get_stack()!r}; "
            "create it or point virtplan:program at one"
        )
    stack = load_stack(settings.program, settings.hosts)
    if settings.parallelism is not None:
        for host in stack.hosts:
            host.workers = settings.parallelism
    return stack


def run(project_dir: Path) -> Registered:
    """Load, register and export; stop with a `pulumi.RunError` carrying virtplan's message."""
    try:
        settings = read_settings(project_dir)
        stack = load(settings)
        if settings.backend == "pulumi-libvirt":
            from virtplan.pulumi.bridged import register_bridged

            registered = register_bridged(stack)
        else:
            registered = register_native(stack)
    except VirtplanError as exc:
        raise pulumi.RunError(f"virtplan: {exc}") from exc
    for key, value in registered.outputs.items():
        pulumi.export(key, value)
    return registered


def secret_inputs(inputs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Inputs with the secret parts wrapped as Pulumi secrets (the whole cloud-init seed, since
    raw user-data may hold anything, and the console password), and the outputs to keep secret."""
    out = dict(inputs)
    secret_outputs = []
    if out.get("cloudInit") is not None:
        out["cloudInit"] = pulumi.Output.secret(out["cloudInit"])
        secret_outputs.append("cloudInit")
    graphics = out.get("graphics")
    if graphics is not None and graphics.get("password") is not None:
        out["graphics"] = {**graphics, "password": pulumi.Output.secret(graphics["password"])}
        secret_outputs.append("graphics")
    return out, secret_outputs


def register_native(stack: Stack) -> Registered:
    """One virtplan dynamic resource per declared resource, dependencies first."""
    from virtplan.pulumi.provider import RESOURCES, VirtplanProvider

    unsupported = [r.address for r in stack.managed() if r.kind not in RESOURCES]
    if unsupported:  # virtplan.Snapshot: taken by `virtplan apply` / `virtplan snapshot create`
        raise VirtplanError(
            f"the Pulumi program does not manage snapshots yet ({', '.join(unsupported)}); "
            "take them with `virtplan apply` or `virtplan snapshot create`"
        )
    template_dir = str(stack.template_dir) if stack.template_dir else None
    providers = {kind: VirtplanProvider(kind, template_dir) for kind in RESOURCES}
    resources: dict[str, pulumi.Resource] = {}
    for resource in ordered(stack.managed()):
        inputs, secret_outputs = secret_inputs(describe(resource, stack))
        opts = pulumi.ResourceOptions(
            depends_on=[resources[d.address] for d in resource.dependencies()],
            delete_before_replace=True,
            additional_secret_outputs=secret_outputs,
        )
        cls = RESOURCES[resource.kind]
        resources[resource.address] = cls(pulumi_name(resource), inputs, providers[resource.kind], opts)
    vms = {
        pulumi_name(vm): {
            "uuid": resources[vm.address].uuid,  # type: ignore[attr-defined]
            "macAddresses": resources[vm.address].macAddresses,  # type: ignore[attr-defined]
            "ipAddresses": resources[vm.address].ipAddresses,  # type: ignore[attr-defined]
        }
        for vm in stack.vms
    }
    return Registered(stack, resources, {"vms": vms})
