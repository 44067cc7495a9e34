"""Declared snapshots of a VM. No libvirt import here.

A `Snapshot` names a point in time of one VM that the stack wants to exist: the planner
takes it when it is missing and deletes it (if this stack took it) when the declaration
is removed. A snapshot cannot be "updated": it keeps the moment it was taken.

- `memory=False` (disk-only): every writable disk is frozen at that moment; the VM goes on
  writing into a new copy-on-write layer. Works on running and stopped VMs, with qcow2 and
  raw disks. Reverting boots the VM afresh from the frozen disks.
- `memory=True`: a full checkpoint of a running VM (disks and memory, libvirt's internal
  snapshot); reverting resumes the VM exactly where it was. Needs qcow2 disks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from virtplan.model.fields import got, lenient, normalise_newlines, text_problem
from virtplan.model.resources import VM, Resource

if TYPE_CHECKING:
    from virtplan.model.resources import Host

#: libvirt's internal snapshot (memory=True) is stored inside qcow2 images.
MEMORY_FORMATS = ("qcow2",)


class Snapshot(Resource):
    """A named snapshot of `vm`, disk-only (default) or with memory."""

    kind: ClassVar[str] = "snapshot"

    @lenient
    def __init__(self, name: str, *, vm: VM, memory: bool = False, description: str = ""):
        self.name, self.vm, self.memory = name, vm, memory
        self.description = normalise_newlines(description)
        # snapshots of one VM are taken one after the other, in the order they are declared
        self._after = _last_snapshot_of(vm)
        self._register()

    @property
    def host(self) -> Host | None:
        """A snapshot lives on its VM's host."""
        return self.vm.host if isinstance(self.vm, VM) else None

    @host.setter
    def host(self, value: Host | None) -> None:
        pass  # always the VM's host; validation may try to assign one

    @property
    def key(self) -> str:
        vm = self.vm.name if isinstance(self.vm, VM) else "?"
        return f"{vm}/{self.name}"

    def dependencies(self) -> list[Resource]:
        deps: list[Resource] = [self.vm] if isinstance(self.vm, VM) else []
        return deps + ([self._after] if self._after is not None else [])

    def declared(self) -> set[str]:
        return {"memory"}


def _last_snapshot_of(vm: VM) -> Snapshot | None:
    from virtplan.model.registry import current_stack

    stack = current_stack()
    if stack is None:
        return None
    earlier = [r for r in stack.resources if isinstance(r, Snapshot) and r.vm is vm]
    return earlier[-1] if earlier else None


def check_snapshot(snap: Snapshot, add: Any) -> None:
    """Report problems of one snapshot through add(resource, field, message)."""
    if not isinstance(snap.vm, VM):
        add(snap, "vm", f"must be a VM of this stack (Snapshot(name, vm=<a VM>)), {got(snap.vm)}")
        return
    if not isinstance(snap.memory, bool):
        add(snap, "memory", f"must be True or False, got {snap.memory!r}")
        return
    if not isinstance(snap.description, str):
        add(snap, "description", f"must be a string, {got(snap.description)}")
    elif text_problem(snap.description):
        add(snap, "description", text_problem(snap.description))
    if not isinstance(snap.vm.disks, list):
        return  # reported on the VM
    if not snap.memory:
        if not snap.vm.disks:
            add(snap, "vm", f"{snap.vm.address} has no disks; a disk-only snapshot needs at least one")
        return
    if snap.vm.state != "running":
        add(snap, "memory", f"a memory snapshot needs a running VM, but {snap.vm.address} has state="
            f"{snap.vm.state!r}; use memory=False for a disk-only snapshot")  # fmt: skip
    for i, disk in enumerate(snap.vm.disks):
        fmt = getattr(disk.volume, "format", None)
        if fmt not in MEMORY_FORMATS:
            add(snap, "memory", f"{snap.vm.address} disks[{i}] is {fmt}; a memory snapshot needs qcow2 disks "
                "(use memory=False for a disk-only snapshot, which works with raw disks too)")  # fmt: skip
