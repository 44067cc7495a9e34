"""Each planned change as operations that know how to run and how to print themselves.

A step (one per kind and action, in the module of its kind) reads the change, the stack
and the host as the plan observed it, and yields operations. Each operation has two
forms that do the same thing: `run(rt)` through libvirt, which apply executes, and
`shell(ctx)`, the equivalent shell commands that `plan --commands` prints. Apply and its
virsh twin come from this one description, so changing how something is applied is one
edit, here.

Decisions on the host's state (is the VM running, is the network active) are taken by
the step from the observation the plan was made from: a plan is applied only to that
state (a saved plan is refused once it moved; `apply STACK` plans under the lock right
before applying), so both forms take the same branch. What is known only while running
(pool-start failing for a missing directory, a guest still up after its shutdown timeout,
a console log that may not exist) is handled inside the operation, in both forms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from virtplan.apply.steps import migrate, network, pool, snapshot, vm, volume
from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.plan.changes import Action, ResourceChange

Step = Callable[[ResourceChange, Context], Iterator[Operation]]

STEPS: dict[tuple[str, Action], Step] = {
    ("network", Action.CREATE): network.create,
    ("network", Action.UPDATE): network.update,
    ("network", Action.RESTART): network.restart,
    ("network", Action.REPLACE): network.replace,
    ("network", Action.DELETE): network.delete,
    ("pool", Action.CREATE): pool.create,
    ("pool", Action.UPDATE): pool.update,
    ("pool", Action.DELETE): pool.delete,
    ("volume", Action.CREATE): volume.create,
    ("volume", Action.UPDATE): volume.update,
    ("volume", Action.REPLACE): volume.replace,
    ("volume", Action.DELETE): volume.delete,
    ("vm", Action.CREATE): vm.create,
    ("vm", Action.UPDATE): vm.update,
    ("vm", Action.RESTART): vm.restart,
    ("vm", Action.REPLACE): vm.replace,
    ("vm", Action.DELETE): vm.delete,
    ("vm", Action.MIGRATE): migrate.migrate,
    ("snapshot", Action.CREATE): snapshot.create,
    ("snapshot", Action.DELETE): snapshot.delete,
}

__all__ = ["STEPS", "Context", "Operation", "Runtime", "operations", "shell_commands"]


def operations(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    """The operations that carry out `change` (lazily: apply runs each before the next is made)."""
    return STEPS[(change.kind, change.action)](change, ctx)


def shell_commands(change: ResourceChange, ctx: Context) -> list[str]:
    """The shell commands equivalent to applying `change`."""
    return [line for op in operations(change, ctx) for line in op.shell(ctx)]
