"""virtplan inside your own Pulumi project: declare resources in `__main__.py`, get Pulumi resources.

    import pulumi
    from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume
    from virtplan.pulumi import deploy, text

    config = pulumi.Config()
    with deploy() as lab:
        Host("local", uri=config.get("uri") or "qemu:///system")
        net = Network("lab-net", cidr="10.30.0.0/24")
        ...
        VM("web-1", ..., cloud_init=CloudInit(password=text(config.require_secret("rootPassword"))))
    pulumi.export("vms", lab.outputs["vms"])

Resources constructed inside the block form one virtplan stack. When the block ends, the stack
is validated as a whole (every problem at once, as `pulumi.RunError`, before anything is
registered) and registered exactly as the repository's own program does: the `virtplan:*`
config (hosts, parallelism, backend) applies. The virtplan stack is the Pulumi stack (its
project is the Pulumi project), which marks what it owns on the hosts: two Pulumi stacks
never own each other's objects.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from virtplan.errors import VirtplanError
from virtplan.model import Host, Resource, Stack, collecting, validate
from virtplan.model.load import apply_host_overrides
from virtplan.pulumi.settings import read_settings


@dataclass
class Deployment:
    """A virtplan stack declared in a Pulumi program; after the block, its Pulumi resources and outputs."""

    stack: Stack
    resources: dict[str, pulumi.Resource] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)

    def resource(self, declared: Resource) -> pulumi.Resource:
        """The Pulumi resource registered for a declared virtplan resource."""
        return self.resources[declared.address]


@contextmanager
def deploy(name: str | None = None, *, project_dir: Path | None = None) -> Iterator[Deployment]:
    """Collect the virtplan resources constructed in the block, then validate and register them."""
    stack = Stack(name or pulumi.get_stack(), project=pulumi.get_project())
    deployment = Deployment(stack)
    with collecting(stack):
        yield deployment
    from virtplan.pulumi.program import refuse_placement, register_native

    try:
        settings = read_settings(project_dir or Path.cwd())
        if not stack.hosts:
            with collecting(stack):
                Host("local")
            stack.resources.insert(0, stack.resources.pop())
        apply_host_overrides(stack, settings.hosts)
        stack = validate(stack)  # one object per host for those declared on several
        refuse_placement(stack)
        if settings.parallelism is not None:
            for host in stack.hosts:
                host.workers = settings.parallelism
        if settings.backend == "pulumi-libvirt":
            from virtplan.pulumi.bridged import register_bridged

            registered = register_bridged(stack)
        else:
            registered = register_native(stack)
    except VirtplanError as exc:
        raise pulumi.RunError(f"virtplan: {exc}") from exc
    deployment.resources.update(registered.resources)
    deployment.outputs.update(registered.outputs)
