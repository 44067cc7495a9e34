"""Drift: what changed outside virtplan since it last applied the stack.

At apply time virtplan records, per address, the spec it applied (`applied` in the state
record). Drift compares the deployed objects with that record, field by field: someone
ran `virsh setmem --config`, edited a network, deleted a volume, stopped a VM. That is
kept apart from the stack's own pending changes (the stack edited since the last apply),
which are not drift; `virtplan plan` shows how applying the stack would undo both.

Only persistent definitions and runtime state (running, active, autostart, and whether a
running VM's NICs are on their network's bridge) are compared.
A live-only change (`virsh setmem` without `--config` on a running guest) leaves the
definition alone and is not visible here: libvirt's live memory figure is only as good as
the guest's balloon driver.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from virtplan.documents.render import Renderer
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import Records
from virtplan.model import VM, Stack
from virtplan.plan.planner import desired_spec, differing

MISSING = "missing (deleted outside virtplan)"


@dataclass
class FieldDrift:
    """One field changed outside virtplan: as applied, as found, as declared now."""

    field: str
    applied: Any  # what virtplan last applied
    actual: Any  # what the host has now
    stack: Any = None  # what the stack declares now (may differ again: a pending change)


@dataclass
class Drift:
    """One object changed (or deleted) outside virtplan."""

    address: str
    host: str
    kind: str
    key: str
    status: str  # "changed" | "missing"
    fields: list[FieldDrift] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from virtplan.plan.planfile import mask

        return {
            "address": self.address,
            "host": self.host,
            "kind": self.kind,
            "key": self.key,
            "status": MISSING if self.status == "missing" else "changed",
            "fields": [
                {
                    "field": f.field,
                    "applied": mask(self.kind, f.field, f.applied),
                    "actual": mask(self.kind, f.field, f.actual),
                    "stack": mask(self.kind, f.field, f.stack),
                }
                for f in self.fields
            ],
        }


@dataclass
class Pending:
    """Fields the stack changed since the last apply (not drift)."""

    address: str
    fields: list[str]


@dataclass
class DriftReport:
    """What drift found: objects changed outside virtplan, pending changes, untracked objects."""

    drifted: list[Drift] = field(default_factory=list)
    pending: list[Pending] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)  # owned, but applied before records

    @property
    def empty(self) -> bool:
        return not self.drifted

    def to_list(self) -> list[dict[str, Any]]:
        return [d.to_dict() for d in self.drifted]


def _norm(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def detect(
    stack: Stack, hosts: dict[str, HostState], store: Records, renderer: Renderer, pending: bool = False
) -> DriftReport:
    """Compare each object virtplan applied with what the host has now; with `pending`,
    also list the fields the stack changed since the last apply."""
    report = DriftReport()
    declared = functools.cache(stack.by_address)  # worked out for the first record that needs it
    for host in hosts.values():
        for address, record in store.view(host.uri).items():
            if record.get("pending") or record.get("seed_of") or record.get("log_of"):
                continue  # being created, or owned through its VM
            if record.get("kind") in ("snapshot", "freeze"):
                continue  # points in time (virtplan.apply.snapshots): nothing to drift
            _, kind, key = address.split("/", 2)
            kind = record.get("kind", kind)
            obj = host.get(kind, key)
            applied = record.get("applied")
            if obj is None:
                if kind == "volume" and not _pool_readable(host, key):
                    continue  # the pool's own drift says why its volumes cannot be read
                report.drifted.append(Drift(address, host.name, kind, key, "missing"))
                continue
            if obj.problem is not None:  # libvirt returns a definition that does not parse
                shown = (applied or {}).get(obj.problem_field)
                fields = [FieldDrift(obj.problem_field, shown, obj.problem)]
                report.drifted.append(Drift(address, host.name, kind, key, "changed", fields))
                continue
            if applied is None:
                report.untracked.append(address)
                continue
            if kind == "vm" and obj.spec.get("unplugged"):
                applied = {"unplugged": [], **applied}  # virtplan never leaves a NIC off its bridge
            if kind == "vm" and applied.get("cloud_init"):
                applied = _keyed_seed(declared().get(address), applied, renderer)
            # `applied` comes from JSON; the observed spec is compared as JSON would have it
            changed = [
                (name, applied[name]) for name in sorted(differing(obj.spec, applied))
                if _norm(obj.spec.get(name)) != applied[name]
            ]  # fmt: skip
            wanted: dict[str, Any] = {}
            if changed or pending:
                resource = declared().get(address)
                wanted = _wanted(resource, renderer) if resource is not None else {}
            if changed:
                fields = [
                    FieldDrift(name, value, _norm(obj.spec.get(name)), wanted.get(name)) for name, value in changed
                ]
                report.drifted.append(Drift(address, host.name, kind, key, "changed", fields))
            if pending and wanted:
                moved = sorted(n for n, v in wanted.items() if n in applied and applied[n] != v)
                if moved:
                    report.pending.append(Pending(address, moved))
    # host by host, by address: what was found is sorted, not the thousands of records looked at
    rank = {name: i for i, name in enumerate(hosts)}

    def order(address: str) -> tuple[int, str]:
        return rank.get(address.split("/", 1)[0], len(rank)), address

    report.drifted.sort(key=lambda d: order(d.address))
    report.pending.sort(key=lambda p: order(p.address))
    report.untracked.sort(key=order)
    return report


def _keyed_seed(vm: Any, applied: dict[str, Any], renderer: Renderer) -> dict[str, Any]:
    """`applied` with a seed digest virtplan 0.1 recorded read as this version writes it, as
    observe reads the domain's own (`Engine.observe`): not a change."""
    if not isinstance(vm, VM) or not applied.get("cloud_init"):
        return applied
    return {**applied, "cloud_init": renderer.upgraded_seed_digest(vm, applied["cloud_init"])}


def _wanted(resource: Any, renderer: Renderer) -> dict[str, Any]:
    try:
        return dict(_norm(desired_spec(resource, renderer)))
    except ValueError:
        return {}


def _pool_readable(host: HostState, volume_key: str) -> bool:
    pool = host.get("pool", volume_key.split("/", 1)[0])
    return pool is not None and bool(pool.spec.get("active"))


def forget_vanished(stack: Stack, hosts: dict[str, HostState], store: Records) -> list[str]:
    """Drop the records of objects deleted outside virtplan that the stack no longer
    declares (nothing will recreate them), once an apply has run; returns their addresses."""
    declared = stack.by_address()
    gone = []
    for host in hosts.values():
        for address, record in store.records(host.uri).items():
            if record.get("pending") or record.get("seed_of") or record.get("log_of") or address in declared:
                continue
            if record.get("kind") in ("snapshot", "freeze") or record.get("layer_of"):
                continue  # kept until their VM or volume goes (virtplan.apply.snapshots, virtplan.apply.layers)
            _, kind, key = address.split("/", 2)
            kind = record.get("kind", kind)
            pool_gone = kind == "volume" and host.get("pool", key.split("/", 1)[0]) is None
            if host.get(kind, key) is None and (kind != "volume" or pool_gone or _pool_readable(host, key)):
                store.forget(host.uri, address)
                gone.append(address)
    return gone


def record_baseline(stack: Stack, hosts: dict[str, HostState], store: Records, renderer: Renderer) -> int:
    """After a complete apply every declared object matches the stack: record that as what
    was applied wherever the record says otherwise (objects applied by an older virtplan,
    or by an apply that was killed before it wrote its records). One write per host;
    returns how many records changed."""
    filled = 0
    for host in hosts.values():
        records = store.records(host.uri)
        updates: dict[str, dict[str, Any]] = {}
        for resource in stack.managed():
            assert resource.host is not None
            record = records.get(resource.address)
            if resource.host.name != host.name or record is None or record.get("pending"):
                continue
            try:
                spec = _norm(desired_spec(resource, renderer))
            except ValueError:
                continue
            if record.get("applied") != spec:
                updates[resource.address] = {"applied": spec}
        if updates:
            store.put_many(host.uri, updates)
            filled += len(updates)
    return filled
