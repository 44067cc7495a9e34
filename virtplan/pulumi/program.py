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
    refuse_placement(stack)
    if settings.parallelism is not None:
        for host in stack.hosts:
            host.workers = settings.parallelism
    return stack


def refuse_placement(stack: Stack) -> None:
    """Placed VMs (`VM(host=[...])`) are the CLI's only: Pulumi names a resource by its host,
    so a VM placed on another host would be replaced there, not moved."""
    placed = [vm.name for vm in stack.as_written.vms if vm.placement is not None]
    if placed:
        raise VirtplanError(
            f"VM {', '.join(placed)}: placement (host=[...]) is not supported under Pulumi yet (Pulumi names each "
            "resource by its host, so a VM placed elsewhere would be replaced, not moved); pin each VM to one host"
        )


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
    """One virtplan dynamic resource per declared resource, dependencies first; `text()` stand-ins
    in the inputs become their Pulumi Outputs."""
    from virtplan.pulumi.outputs import resolve
    from virtplan.pulumi.provider import RESOURCES, VirtplanProvider

    unsupported = [r.address for r in stack.managed() if r.kind not in RESOURCES]
    if unsupported:  # virtplan.Snapshot: taken by `virtplan apply` / `virtplan snapshot create`
        raise VirtplanError(
            f"the Pulumi program does not manage snapshots yet ({', '.join(unsupported)}); "
            "take them with `virtplan apply` or `virtplan snapshot create`"
        )
    template_dir = str(stack.template_dir) if stack.template_dir else None
    providers = {kind: VirtplanProvider(kind, template_dir, pulumi.get_stack()) for kind in RESOURCES}
    resources: dict[str, pulumi.Resource] = {}
    for resource in ordered(stack.managed()):
        inputs, secret_outputs = secret_inputs(resolve(describe(resource, stack)))
        opts = pulumi.ResourceOptions(
            depends_on=[resources[d.address] for d in resource.dependencies() if d.address in resources],
            delete_before_replace=True,
            additional_secret_outputs=secret_outputs,
        )
        cls = RESOURCES[resource.kind]
        resources[resource.address] = cls(pulumi_name(resource), inputs, providers[resource.kind], opts)
    return Registered(stack, resources, native_outputs(stack, resources))


def native_outputs(stack: Stack, resources: dict[str, pulumi.Resource]) -> dict[str, Any]:
    """The stack outputs, by Pulumi resource name: per VM its uuid, MACs and addresses; per
    network its uuid and bridge; per pool its uuid and path; per volume its path."""

    def out(resource: Any, *names: str) -> dict[str, Any]:
        return {name: getattr(resources[resource.address], name) for name in names}

    return {
        "vms": {pulumi_name(vm): out(vm, "uuid", "macAddresses", "ipAddresses") for vm in stack.vms},
        "networks": {
            pulumi_name(net): out(net, "uuid", "bridgeName") for net in stack.networks if net.address in resources
        },
        "pools": {pulumi_name(pool): {**out(pool, "uuid"), "path": str(pool.path)} for pool in stack.pools},
        "volumes": {pulumi_name(vol): out(vol, "volumePath") for vol in stack.volumes},
    }
