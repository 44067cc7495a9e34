"""VMs that change host: found, owned by the stack, on a host where the stack no longer
declares them, and declared on another host where they are missing. Pure: no I/O.

Such a VM is not created anew and deleted: it is *moved*, as one `migrate` change of the
destination host that carries everything the move needs (`Move.describe`, saved in the
plan):

- running and to stay running: a live migration, peer to peer, its disks copied whole by
  QEMU while the guest runs (an overlay's data and its base image's, into an overlay on
  the destination's base: libvirt 9.0 cannot copy only the top layer into a volume made
  beforehand);
- stopped (or to be stopped), or running where it cannot move live (the two hosts run
  different domain types): its disks' files are copied from host to host through this
  machine and it is defined on the destination (started there if declared running). A
  running VM moved that way is stopped for the copy: that move is destructive.

Either way the destination's volumes are created first as the stack's own (intent,
creation, confirmation: `virtplan.apply.claims`), and after the move the source's domain,
the disks it no longer needs, its seed and console log, and their records are gone.

A move keeps the VM as it is: UUID, MACs, device addresses, disks at the same pool and
volume names. Changing other declared fields in the same plan is refused (move, then
change), and so are VMs with snapshots or frozen layers, whose chains cannot be moved.
"""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from virtplan.documents.render import Renderer
from virtplan.errors import FieldError
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import Records
from virtplan.model import VM, Stack, Volume
from virtplan.plan.ownership import owner_stack

#: Fields a move carries over as they are, or sets itself (power state and autostart).
#: "unplugged" (NICs off their bridge on the source) means nothing on the destination, where
#: the guest's NICs are plugged afresh.
_MOVE_FIELDS = {"state", "autostart", "type", "unplugged"}


@dataclass
class MovedDisk:
    """One disk of a VM that changes host: what the move copies or finds for it."""

    key: str  # "pool/name", the same on both hosts
    source_address: str
    dest_address: str
    create: bool  # made on the destination by the move (else it is there, the stack's own)
    delete_source: bool  # the source's copy is the stack's and no longer declared there
    bytes: int  # what the move copies for it
    backing: str | None  # its base image on the destination, as declared (an overlay is made on it)
    capacity: int  # as the source has it (a copy is made at the same size)
    format: str  # "qcow2" or "raw"

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class Move:
    """A VM that changes host: how (live or stopped), its disks, what is cleaned up after."""

    vm: VM  # as declared on the destination
    source: HostState
    obj: ObservedObject  # the domain on the source
    live: bool
    stop: bool  # stopped on the source before its disks are copied
    start: bool  # started on the destination
    why_not_live: str | None = None
    disks: list[MovedDisk] = field(default_factory=list)
    cleanup: list[str] = field(default_factory=list)  # source addresses deleted and forgotten after

    @property
    def copy_bytes(self) -> int:
        return sum(d.bytes for d in self.disks)

    @property
    def aliases(self) -> list[str]:
        """The source's addresses this move takes care of."""
        return [f"{self.source.name}/vm/{self.vm.name}", *self.cleanup]

    def describe(self) -> dict[str, Any]:
        """The move as plain data (saved in the plan, read by the migrate step)."""
        return {
            "source": self.source.name,
            "live": self.live,
            "stop": self.stop,
            "start": self.start,
            "why_not_live": self.why_not_live,
            "copy_bytes": self.copy_bytes,
            "disks": [d.to_dict() for d in self.disks],
            "cleanup": list(self.cleanup),
        }


def find_moves(
    stack: Stack,
    renderer: Renderer,
    observed: dict[str, HostState],
    store: Records,
    desired: Callable[[VM, Renderer], dict[str, Any]],
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, Move], list[FieldError]]:
    """The VMs of `stack` that move, by their (destination) address, and what refuses a
    move; `desired` gives a VM's comparable spec (the planner's) with a renderer; VMs named
    in `skip` are left out."""
    declared = functools.cache(stack.by_address)  # worked out for the first VM missing from its host
    moves: dict[str, Move] = {}
    errors: list[FieldError] = []
    for vm in stack.vms:
        if vm.host is None or vm.host.name not in observed or vm.name in skip:
            continue
        dest = observed[vm.host.name]
        if dest.get("vm", vm.name) is not None:
            continue
        found = [
            (host, obj)
            for host in observed.values()
            if host.name != dest.name
            and (obj := host.get("vm", vm.name)) is not None
            and f"{host.name}/vm/{vm.name}" not in declared()
            and owner_stack(obj, f"{host.name}/vm/{vm.name}", host.uri, store, stack.key) == stack.key
        ]
        if not found:
            continue
        if len(found) > 1:
            where = ", ".join(h.name for h, _ in found)
            errors.append(FieldError(vm.address, "host", f"this stack's VM {vm.name!r} is on several hosts ({where}); "
                                     "delete all but one of them (virsh undefine), then plan again"))  # fmt: skip
            continue
        source, obj = found[0]
        wanted = desired(vm, renderer.keyed_as_on(vm, source.name))  # its secrets as keyed there
        move, problems = _move(vm, source, obj, dest, stack, renderer, store, declared(), wanted)
        errors += problems
        if move is not None and not problems:
            moves[vm.address] = move
    return moves, errors


def _move(
    vm: VM,
    source: HostState,
    obj: ObservedObject,
    dest: HostState,
    stack: Stack,
    renderer: Renderer,
    store: Records,
    declared: dict[str, Any],
    desired: dict[str, Any],
) -> tuple[Move | None, list[FieldError]]:
    errors: list[FieldError] = []
    source_vm = f"{source.name}/vm/{vm.name}"

    def refuse(message: str, field: str = "host") -> tuple[None, list[FieldError]]:
        return None, [FieldError(vm.address, field, f"cannot move from {source.name} to {dest.name}: {message}")]

    records = store.records(source.uri)
    disks = {f"{source.name}/volume/{d.volume.key}" for d in vm.disks}
    layered = sorted(
        a for a, r in records.items()
        if (r.get("kind") in ("snapshot", "freeze") and r.get("vm") == source_vm) or r.get("layer_of") in disks
    )  # fmt: skip
    if layered:
        return refuse("it has snapshots or frozen disk layers, whose chains do not move; delete its snapshots first")
    differ = sorted(k for k, v in desired.items() if k not in _MOVE_FIELDS and obj.spec.get(k) != v)
    if differ:
        return refuse(
            f"{', '.join(differ)} also changed; a move keeps the VM as it is: apply the move first (with these "
            "fields as they are now), then the change"
        )
    have = [d.get("volume") for d in obj.spec.get("disks", [])]
    want = [d.volume.key for d in vm.disks]
    if have != want:
        return refuse(f"its disks are {have} there and {want} here; a move keeps the disks' pool and volume names")
    running = obj.spec.get("state") == "running"
    stays_up = running and vm.state == "running"
    why_not = None
    if stays_up and obj.spec.get("type") != desired.get("type"):
        why_not = f"domain type {obj.spec.get('type')} on {source.name}, {desired.get('type')} on {dest.name}"
    live = stays_up and why_not is None
    move = Move(vm, source, obj, live=live, stop=running and not live, start=vm.state == "running" and not live,
                why_not_live=why_not)  # fmt: skip
    for disk in vm.disks:
        volume = disk.volume
        assert isinstance(volume, Volume)
        key = volume.key
        src_address, dst_address = f"{source.name}/volume/{key}", f"{dest.name}/volume/{key}"
        src = source.get("volume", key)
        if src is None:
            return refuse(f"its disk {key} cannot be read there (is its pool active?)")
        mine = owner_stack(src, src_address, source.uri, store, stack.key) == stack.key
        backing = src.spec.get("backing")
        wanted_backing = renderer.volume_context(volume).backing_path
        if (backing is None) != (wanted_backing is None):
            return refuse(f"its disk {key} is {'an overlay' if backing else 'not an overlay'} there, unlike its "
                          "declaration; apply the stack where it is first")  # fmt: skip
        if backing != wanted_backing and not live:
            return refuse(
                f"its disk {key} is an overlay on {backing}, which is not where {dest.name}'s copy would find "
                f"its base ({wanted_backing}); a stopped VM's disks are copied file by file"
            )
        move.disks.append(MovedDisk(
            key, src_address, dst_address,
            create=dest.get("volume", key) is None,
            delete_source=mine and src_address not in declared,
            bytes=_file_bytes(src),
            backing=wanted_backing,
            capacity=int(src.spec.get("capacity") or 0),
            format="qcow2" if src.spec.get("format") == "qcow2" else "raw",
        ))  # fmt: skip
    if move.live:  # QEMU copies each disk's data, its base's included
        for d in move.disks:
            d.bytes = _chain_bytes(source, source.get("volume", d.key))
    move.cleanup = [d.source_address for d in move.disks if d.delete_source]
    move.cleanup += sorted(a for a, r in records.items() if source_vm in (r.get("seed_of"), r.get("log_of")))
    return move, errors


def _file_bytes(obj: ObservedObject | None) -> int:
    """The bytes of a volume's file (what a copy of it transfers)."""
    if obj is None or not obj.xml:
        return 0
    root = ET.fromstring(obj.xml)
    for tag in ("physical", "allocation"):
        text = root.findtext(tag)
        if text and text.isdigit():
            return int(text)
    return int(obj.spec.get("capacity") or 0)


def _chain_bytes(host: HostState, obj: ObservedObject | None) -> int:
    """A volume's bytes and those of its backing chain on the same host."""
    total, seen = 0, set()
    while obj is not None and obj.uuid not in seen:
        seen.add(obj.uuid)
        total += _file_bytes(obj)
        backing = obj.spec.get("backing")
        obj = next((o for o in host.of_kind("volume") if o.uuid == backing), None) if backing else None
    return total
