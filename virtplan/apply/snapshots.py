"""Snapshots: declared in stacks (`virtplan.Snapshot`) or taken on demand (`virtplan snapshot`).

Two kinds, because libvirt 9.0 can neither take an internal disk-only snapshot of a running
VM nor revert an external one:

- **disk-only** (default): every writable disk is frozen (see `virtplan.apply.layers`): the VM
  keeps running on new copy-on-write layers and the frozen files hold the snapshot. Taking
  one costs the same for 1 MiB or 1 TiB; clones can start from it (`clone --from-snapshot`).
  Reverting stops the VM, puts fresh layers on the frozen files, drops the discarded layers
  nobody else builds on, and starts the VM again if it was running (a fresh boot).
- **memory**: libvirt's internal checkpoint of a running VM (qcow2 disks and RAM);
  reverting resumes the VM where it was.

Every snapshot virtplan takes is recorded in the stack's records on the host
(``<host>/snapshot/<vm>/<name>``); the planner manages only declared ones (and deletes only
ones this stack took), so snapshots taken on demand survive `apply`. Deleting a VM forgets
its snapshots.
"""

from __future__ import annotations

import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from virtplan.errors import VirtplanError
from virtplan.hosts.snapshots import _internal_id

if TYPE_CHECKING:
    from virtplan.hosts.records import Records


class SnapshotError(VirtplanError):
    """A snapshot cannot be taken, reverted to or deleted."""


@dataclass
class SnapshotInfo:
    host: str
    vm: str
    name: str
    mode: str  # "disk" or "memory"
    created: str
    declared: bool
    disks: dict[str, str]
    blocked: str | None = None  # why it can no longer be reverted to (None: it can)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def address_of(host: str, vm: str, name: str) -> str:
    return f"{host}/snapshot/{vm}/{name}"


# -- one VM ---------------------------------------------------------------------------------
def take(
    conn: Any,
    store: Records,
    uri: str,
    host: str,
    vm: str,
    name: str,
    memory: bool = False,
    imperative: bool = False,
    description: str = "",
) -> None:
    """Take snapshot `name` of VM `vm`: disk-only (frozen disks) or a memory checkpoint."""
    import libvirt

    from virtplan.apply.layers import freeze
    from virtplan.hosts.chains import writable_disks

    address = address_of(host, vm, name)
    existing = store.get(uri, address)
    if existing is not None and existing.get("mode") == "memory" and _internal_id(conn, vm, name) is None:
        store.forget(uri, address)  # deleted outside virtplan: the record is stale
    elif existing is not None:
        raise SnapshotError(f"VM {vm!r} already has a snapshot {name!r}; delete it first or pick another name")
    dom = conn.lookupByName(vm)
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    common = {"vm": f"{host}/vm/{vm}", "imperative": imperative, "created": created, "description": description}
    if not memory:
        freeze(conn, dom, store, uri, host, name, kind="snapshot",
               record={"id": f"layers:{uuid.uuid4()}", "mode": "disk", **common})  # fmt: skip
        return
    if not dom.isActive():
        raise SnapshotError(f"a memory snapshot needs a running VM; {vm!r} is stopped (take a disk-only one)")
    from virtplan.documents.fragments import memory_snapshot

    store.put(uri, address, kind="snapshot", pending=True, mode="memory", **common)
    try:
        snap = dom.snapshotCreateXML(memory_snapshot(name, description or "virtplan"), 0)
    except libvirt.libvirtError:
        store.forget(uri, address)
        raise
    stamp = ET.fromstring(snap.getXMLDesc()).findtext("creationTime") or ""
    tops = {d.target: d.top for d in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
    store.put(uri, address, id=f"internal:{stamp}", pending=False, tops=tops)


def revert(conn: Any, store: Records, uri: str, host: str, vm: str, name: str) -> None:
    """Bring VM `vm` back to snapshot `name`; its current state is discarded."""
    record = _record(store, uri, host, vm, name)
    blocker = revert_blocker(conn, store, uri, host, vm, name, record)
    if blocker is not None:
        raise SnapshotError(f"snapshot {name!r} of {vm!r} can no longer be reverted to: {blocker}")
    dom = conn.lookupByName(vm)
    if record.get("mode") == "memory":
        dom.revertToSnapshot(dom.snapshotLookupByName(name), 0)
        return
    _revert_layers(conn, store, uri, host, dom, name, record)


def revert_blocker(conn: Any, store: Records, uri: str, host: str, vm: str, name: str,
                   record: dict[str, Any]) -> str | None:  # fmt: skip
    """Why snapshot `name` of `vm` can no longer be reverted to, or None if it can."""
    import libvirt

    from virtplan.hosts.chains import chain_of, writable_disks

    try:
        dom = conn.lookupByName(vm)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return "the VM is gone"
        raise
    disks = {d.target: d for d in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
    if record.get("mode") == "memory":
        if _internal_id(conn, vm, name) is None:
            return "libvirt no longer has it (deleted outside virtplan)"
        if {t: d.top for t, d in disks.items()} != record.get("tops"):
            return ("it lives in disk files that were frozen since (a disk-only snapshot or a clone was "
                    "taken later)")  # fmt: skip
        return None
    for target, frozen in (record.get("disks") or {}).items():
        disk = disks.get(target)
        if disk is None or disk.volume is None:
            return f"the VM no longer has disk {target}"
        chain = chain_of(store, uri, f"{host}/volume/{disk.volume}")
        if frozen not in chain and frozen != _path_of(conn, disk.volume):
            return f"disk {target} no longer builds on its state"
    return None


def _revert_layers(conn: Any, store: Records, uri: str, host: str, dom: Any, name: str,
                   record: dict[str, Any]) -> None:  # fmt: skip
    import libvirt

    from virtplan.apply.layers import FrozenDiskRef, delete_layer_if_unused, new_layer, set_chain
    from virtplan.hosts.chains import chain_of, referenced_files, writable_disks

    was_running = bool(dom.isActive())
    disks = {d.target: d for d in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
    plan: list[tuple[str, list[str], list[str]]] = []  # volume address, new chain below the new top, discarded
    refs: dict[str, FrozenDiskRef] = {}
    for target, frozen in (record.get("disks") or {}).items():
        disk = disks[target]  # checked by revert_blocker
        assert disk.volume is not None
        volume_address = f"{host}/volume/{disk.volume}"
        chain = chain_of(store, uri, volume_address)
        at = chain.index(frozen) if frozen in chain else len(chain)
        plan.append((volume_address, chain[at:], chain[:at]))
        fmt = (record.get("formats") or {}).get(target, "qcow2")
        refs[volume_address] = FrozenDiskRef(frozen, fmt, disk.volume, volume_address)
    if was_running:
        dom.destroy()  # the running state is being discarded
    for volume_address, below, _ in plan:
        top = new_layer(conn, store, uri, host, refs[volume_address], f"{name}-revert")
        set_chain(conn, dom, store, uri, host, volume_address, [top, *below])
    keep = referenced_files(store, uri)
    for _, _, discarded in plan:
        for path in discarded:  # top first: each one's only user was the one above
            delete_layer_if_unused(conn, store, uri, path, keep)
    if was_running:
        dom.create()


def _path_of(conn: Any, key: str) -> str:
    pool, _, name = key.partition("/")
    return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(name).path())


def delete(conn: Any, store: Records, uri: str, host: str, vm: str, name: str, missing_ok: bool = False) -> None:
    """Delete snapshot `name` of `vm`. A memory snapshot is deleted from its images; a
    disk-only one's frozen files are merged back into the disk's chain where nothing else
    needs them (`virtplan.apply.layers.compact_vm`), so chains do not grow for good."""
    import libvirt

    from virtplan.hosts.chains import writable_disks

    address = address_of(host, vm, name)
    record = store.get(uri, address)
    if record is None:
        if missing_ok:
            return
        raise SnapshotError(f"VM {vm!r} has no snapshot {name!r} taken by this stack (see `virtplan snapshot list`)")
    if record.get("mode") == "memory":
        try:
            dom = conn.lookupByName(vm)
            snap = dom.snapshotLookupByName(name)
            current = {d.target: d.top for d in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
            # frozen files must not be written: then only libvirt's record of it goes
            flags = 0 if current == record.get("tops") else libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
            snap.delete(flags)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT):
                raise
    store.forget(uri, address)
    from virtplan.apply.layers import compact_vm

    try:
        dom = conn.lookupByName(vm)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return
        raise
    compact_vm(conn, dom, store, uri, host)


def _record(store: Records, uri: str, host: str, vm: str, name: str) -> dict[str, Any]:
    record = store.get(uri, address_of(host, vm, name))
    if record is None or record.get("pending"):
        raise SnapshotError(f"VM {vm!r} has no snapshot {name!r} taken by this stack (see `virtplan snapshot list`)")
    return record
