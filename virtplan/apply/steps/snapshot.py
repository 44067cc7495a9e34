"""Declared snapshots: take one (disk-only: frozen disks; or a memory checkpoint), or
forget one the stack no longer declares (see virtplan.apply.snapshots)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.shell import q
from virtplan.plan.changes import ResourceChange


@dataclass(frozen=True)
class TakeSnapshot(Operation):
    """Disk-only snapshots freeze the disks into layers only virtplan tracks, so their shell
    form is the virtplan command; a memory checkpoint is libvirt's own."""

    vm: str
    name: str
    memory: bool
    description: str

    def run(self, rt: Runtime) -> None:
        from virtplan.apply.snapshots import take

        ctx = rt.ctx
        take(rt.conn, ctx.store, ctx.host.uri, ctx.host.name, self.vm, self.name, memory=self.memory,
             description=self.description)  # fmt: skip

    def shell(self, ctx: Context) -> list[str]:
        if self.memory:
            return [f"virsh snapshot-create-as {q(self.vm)} {q(self.name)}  # a checkpoint: disks and memory"]
        return [f"# disk-only snapshots freeze the disks into copy-on-write layers that virtplan tracks; "
                f"run: virtplan snapshot create STACK {q(self.vm)} --name {q(self.name)}"]  # fmt: skip


@dataclass(frozen=True)
class DeleteSnapshot(Operation):
    vm: str
    name: str

    def run(self, rt: Runtime) -> None:
        from virtplan.apply.snapshots import delete

        ctx = rt.ctx
        delete(rt.conn, ctx.store, ctx.host.uri, ctx.host.name, self.vm, self.name, missing_ok=True)

    def shell(self, ctx: Context) -> list[str]:
        return [f"# forget snapshot {self.name} of {self.vm}: virtplan snapshot delete STACK {q(self.vm)} "
                f"--name {q(self.name)}"]  # fmt: skip


def create(change: ResourceChange, ctx: Context) -> Iterator[TakeSnapshot]:
    snap = ctx.resource(change)
    yield TakeSnapshot(snap.vm.name, snap.name, bool(snap.memory), snap.description)


def delete(change: ResourceChange, ctx: Context) -> Iterator[DeleteSnapshot]:
    vm, _, name = change.key.partition("/")
    yield DeleteSnapshot(vm, name)
