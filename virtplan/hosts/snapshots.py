"""The snapshots a plan must know about, read from the host and the stack's records.

Declared snapshots (`virtplan.Snapshot`) are planned like any resource; this reader adds the
ones this stack took (except those taken on demand and not declared) to the observed state.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState
    from virtplan.hosts.records import Records
    from virtplan.model import Stack


# -- observe (for the planner) ------------------------------------------------------------
def observe_snapshots(conn: Any, state: HostState, stack: Stack, store: Records) -> None:
    """Add the snapshots the planner must know about to `state`: this stack's recorded ones
    (except those taken on demand and not declared) and, for declared memory snapshots,
    whatever libvirt has under that name (someone else's, if not recorded: a clash)."""
    from virtplan.documents.specs import SnapshotSpec, generic
    from virtplan.hosts.observe import ObservedObject
    from virtplan.model import Snapshot

    declared = {s.key: s for s in stack.of_kind(Snapshot) if s.host is not None and s.host.name == state.name}
    records = {
        a: r for a, r in store.view(state.uri).items()
        if r.get("kind") == "snapshot" and a.startswith(f"{state.name}/snapshot/")
    }  # fmt: skip
    if not declared and not records:
        return
    for address, record in records.items():
        key = address.split("/", 2)[2]
        if record.get("imperative") and key not in declared:
            continue  # taken with `virtplan snapshot create`: not the planner's
        vm_name = key.split("/", 1)[0]
        if state.get("vm", vm_name) is None:
            continue  # the VM is gone, and its snapshots with it
        memory = record.get("mode") == "memory"
        uid = record.get("id")
        if memory:
            uid = _internal_id(conn, vm_name, key.split("/", 1)[1])
            if uid is None:
                continue
        spec = SnapshotSpec(memory=memory)
        state.objects[("snapshot", key)] = ObservedObject("snapshot", key, uid, "", generic(spec))
    for key, snap in declared.items():
        if ("snapshot", key) in state.objects or not snap.memory or state.get("vm", snap.vm.name) is None:
            continue
        uid = _internal_id(conn, snap.vm.name, snap.name)
        if uid is not None:
            spec = SnapshotSpec(memory=True)
            state.objects[("snapshot", key)] = ObservedObject("snapshot", key, uid, "", generic(spec))


def _internal_id(conn: Any, vm: str, name: str) -> str | None:
    """libvirt's snapshot `name` of `vm` as "internal:<creation time>", or None."""
    import libvirt

    try:
        snap = conn.lookupByName(vm).snapshotLookupByName(name)
        return "internal:" + (ET.fromstring(snap.getXMLDesc()).findtext("creationTime") or "")
    except libvirt.libvirtError:
        return None
