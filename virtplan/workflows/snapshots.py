"""Snapshots of a whole environment, on demand: `virtplan snapshot create|revert|delete|list`.

Every VM of a stack (or the named ones) at once; running VMs pause together for an instant
so that all disks share one moment. The per-VM work is `virtplan.apply.snapshots`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from virtplan.apply.snapshots import (
    SnapshotError,
    SnapshotInfo,
    _record,
    delete,
    revert,
    revert_blocker,
    take,
)

if TYPE_CHECKING:
    from virtplan.engine import Engine
    from virtplan.hosts.records import Records


def listing(store: Records, uri: str, host: str, declared: Iterable[str] = (), conn: Any = None) -> list[SnapshotInfo]:
    """Every snapshot this stack took on `host` (declared keys are "vm/name"); with `conn`,
    each says whether it can still be reverted to."""
    wanted = set(declared)
    out = []
    for address, record in sorted(store.records(uri).items()):
        if record.get("kind") != "snapshot" or not address.startswith(f"{host}/snapshot/") or record.get("pending"):
            continue
        vm, _, name = address.split("/", 2)[2].partition("/")
        files = dict(record.get("disks") or record.get("tops") or {})
        mode = record.get("mode", "disk")
        info = SnapshotInfo(host, vm, name, mode, record.get("created", ""), f"{vm}/{name}" in wanted, files)
        if conn is not None:
            info.blocked = revert_blocker(conn, store, uri, host, vm, name, record)
        out.append(info)
    return out


# -- a whole environment ------------------------------------------------------------------
def _targets(engine: Engine, vms: list[str] | None) -> list[tuple[str, str, str]]:
    """(host, uri, vm) for the stack's VMs (or the named ones), each checked to be deployed
    and owned by the stack."""
    from virtplan.plan.ownership import owner_stack

    observation = engine.observe()
    chosen = [v for v in engine.stack.vms if not vms or v.name in vms]
    unknown = sorted(set(vms or []) - {v.name for v in engine.stack.vms})
    if unknown:
        names = ", ".join(v.name for v in engine.stack.vms)
        raise SnapshotError(f"stack {engine.stack.name!r} declares no VM {', '.join(unknown)} (it has: {names})")
    out = []
    for vm in chosen:
        assert vm.host is not None
        host = observation.hosts[vm.host.name]
        obj = host.get("vm", vm.name)
        if obj is None:
            raise SnapshotError(f"{vm.address} is not deployed; run `virtplan apply` first")
        if owner_stack(obj, vm.address, host.uri, engine.store, engine.stack.key) != engine.stack.key:
            raise SnapshotError(f"{vm.address} exists but does not belong to stack {engine.stack.name!r}")
        out.append((vm.host.name, host.uri, vm.name))
    return out


def create_all(engine: Engine, name: str, vms: list[str] | None = None, memory: bool = False) -> list[str]:
    """Snapshot `name` of every VM of the stack (or `vms`). Running VMs are paused together
    while disk-only snapshots are taken, so the environment's disks share one instant."""
    targets = _targets(engine, vms)
    paused = []
    try:
        if not memory and len(targets) > 1:
            for host, _, vm in targets:
                dom = engine.connection(host).lookupByName(vm)
                if dom.isActive() and dom.info()[0] == 1:  # VIR_DOMAIN_RUNNING
                    dom.suspend()
                    paused.append(dom)
        for host, uri, vm in targets:
            take(engine.connection(host), engine.store, uri, host, vm, name, memory=memory, imperative=True)
    finally:
        for dom in paused:
            dom.resume()
    return [f"{host}/{vm}" for host, _, vm in targets]


def check_revert(engine: Engine, name: str, vms: list[str] | None = None) -> list[tuple[str, str, str]]:
    """The (host, uri, vm) to revert to snapshot `name`: every one deployed, with that
    snapshot, still revertable (SnapshotError naming each problem otherwise). Run before
    asking for confirmation, and again under the lock."""
    targets = _targets(engine, vms)
    problems = []
    for host, uri, vm in targets:
        try:
            record = _record(engine.store, uri, host, vm, name)
        except SnapshotError as exc:
            problems.append(str(exc))
            continue
        blocker = revert_blocker(engine.connection(host), engine.store, uri, host, vm, name, record)
        if blocker is not None:
            problems.append(f"snapshot {name!r} of {vm!r} can no longer be reverted to: {blocker}")
    if problems:
        raise SnapshotError("; ".join(problems) + "; nothing was reverted")
    return targets


def revert_all(engine: Engine, name: str, vms: list[str] | None = None) -> list[str]:
    """Revert every VM of the stack (or `vms`) to its snapshot `name`."""
    targets = check_revert(engine, name, vms)  # all present and revertable before touching any
    for host, uri, vm in targets:
        revert(engine.connection(host), engine.store, uri, host, vm, name)
    return [f"{host}/{vm}" for host, _, vm in targets]


def delete_all(engine: Engine, name: str, vms: list[str] | None = None) -> list[str]:
    targets = _targets(engine, vms)
    for host, uri, vm in targets:
        _record(engine.store, uri, host, vm, name)
    for host, uri, vm in targets:
        delete(engine.connection(host), engine.store, uri, host, vm, name)
    return [f"{host}/{vm}" for host, _, vm in targets]


def list_all(engine: Engine) -> list[SnapshotInfo]:
    from virtplan.model import Snapshot

    declared = [s.key for s in engine.stack.of_kind(Snapshot)]
    out = []
    for host in engine.stack.hosts:
        out += listing(engine.store, host.uri, host.name, declared, engine.connection(host.name))
    return out
