"""The planner: desired stack + observed hosts + ownership record -> Plan. Pure: no I/O.

A Plan is data. Every change has an address, one action from a closed set, the
field-level before/after with each field's policy, a reason, a destructive mark where
data or uptime is at risk, the addresses it must wait for, and the fingerprint of the
observed object it was computed from.
"""

from __future__ import annotations

import graphlib

from virtplan.documents.parse import Spec, parse
from virtplan.documents.render import Renderer
from virtplan.errors import FieldError
from virtplan.hosts.chains import disk_files
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import Records
from virtplan.model import VM, Network, Pool, Resource, Stack, Volume
from virtplan.plan.changes import Action, FieldChange, Plan, PlanError, Reason, ResourceChange
from virtplan.plan.ownership import owned_objects, owner_stack
from virtplan.plan.policy import IMMUTABLE_HINTS, Policy, change_risk, choose_action, delete_risk, field_policy

__all__ = [  # the plan's data types and ownership helpers live beside; callers may import them from here
    "Action", "FieldChange", "Plan", "PlanError", "Reason", "ResourceChange",
    "desired_spec", "make_plan", "ordered", "owned_objects", "owner_stack", "rendered_spec", "running_users",
]  # fmt: skip

KIND_ORDER = {"network": 0, "pool": 0, "volume": 1, "vm": 2, "snapshot": 3}


# -- desired specs ----------------------------------------------------------------------
def rendered_spec(resource: Resource, renderer: Renderer) -> Spec:
    """The resource's rendered document parsed back: what libvirt will be given."""
    if isinstance(resource, VM):
        return parse("vm", renderer.domain_xml(resource, reveal_secrets=False))
    if isinstance(resource, Network):
        return parse("network", renderer.network_xml(resource))
    if isinstance(resource, Pool):
        return parse("pool", renderer.pool_xml(resource))
    return parse("volume", renderer.volume_xml(resource))  # type: ignore[arg-type]


def desired_spec(resource: Resource, renderer: Renderer) -> Spec:
    """The comparable form of a declared resource, limited to the fields the stack pins,
    plus the runtime fields (power state, autostart).

    With the built-in templates it is computed from the render contexts (`fastspec`,
    proven equal to rendering and parsing); with a stack's own templates it is their
    output parsed back, so overrides take part in diffing."""
    from virtplan.documents import fastspec

    if resource.kind == "snapshot":  # no XML of its own: what kind of snapshot it is
        return fastspec.desired(resource, renderer)
    if renderer.stack.template_dir is not None:
        spec = rendered_spec(resource, renderer)
    else:
        spec = fastspec.desired(resource, renderer)
    if isinstance(resource, VM):
        spec = {k: v for k, v in spec.items() if k in resource.declared()}
        spec.update(state=resource.state, autostart=resource.autostart)
    elif isinstance(resource, Network):
        spec = {k: v for k, v in spec.items() if k in resource.declared()}
        spec.update(autostart=resource.autostart, active=True)
    elif isinstance(resource, Pool):
        spec.update(autostart=resource.autostart, active=True)
    elif isinstance(resource, Volume):
        if resource.format == "qcow2" and resource.source is None:
            spec["capacity"] = -(-spec["capacity"] // 512) * 512  # qemu-img rounds up to sectors
        spec = {k: v for k, v in spec.items() if k in resource.declared()}
    else:  # pragma: no cover - the model has no other kinds
        raise TypeError(resource)
    return spec


def ordered(resources: list[Resource]) -> list[Resource]:
    """Dependencies first; among independent resources, networks and pools, then volumes,
    then VMs, in declaration order."""
    position = {id(r): i for i, r in enumerate(resources)}
    by_id = {id(r): r for r in resources}
    graph = {id(r): {id(d) for d in r.dependencies() if id(d) in by_id} for r in resources}
    sorter = graphlib.TopologicalSorter(graph)
    sorter.prepare()
    out: list[Resource] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda i: (KIND_ORDER[by_id[i].kind], position[i]))
        out.extend(by_id[i] for i in ready)
        sorter.done(*ready)
    return out


# -- the planner ------------------------------------------------------------------------
class _Planner:
    def __init__(self, stack: Stack, renderer: Renderer, observed: dict[str, HostState], store: Records):
        self.stack, self.renderer, self.observed, self.store = stack, renderer, observed, store
        self.errors: list[FieldError] = []
        self.changes: dict[str, ResourceChange] = {}

    def owned(self, obj: ObservedObject, address: str, host: HostState) -> bool:
        return owner_stack(obj, address, host.uri, self.store, self.stack.key) == self.stack.key

    def clash(self, resource: Resource | str, obj: ObservedObject, host: HostState, kind: str, key: str) -> None:
        address = resource if isinstance(resource, str) else resource.address
        other = owner_stack(obj, address, host.uri, self.store, self.stack.key)
        if other is not None:
            why = f"it belongs to stack {other!r}"
            fix = "rename it here, or remove it from that stack first"
        else:
            why = "virtplan did not create it (it has no virtplan ownership mark or record)"
            fix = "rename it in the stack, or bring it under management with `virtplan import`"
        self.errors.append(
            FieldError(address, "name", f"a {kind} named {key!r} already exists on host {host.name!r} and {why}; {fix}")
        )

    # desired side
    def plan_resource(self, resource: Resource) -> None:
        try:
            self._plan_resource(resource)
        except ValueError as exc:  # what the host cannot do (arch, domain type)
            self.errors.append(FieldError(resource.address, "host", str(exc)))

    def _plan_resource(self, resource: Resource) -> None:
        assert resource.host is not None
        host = self.observed[resource.host.name]
        obj = host.get(resource.kind, resource.key)
        deps = [d.address for d in resource.dependencies() if d.address in self.changes]
        if isinstance(resource, VM):
            self.check_seed(resource, host)
        if obj is None:
            fields = [FieldChange(k, None, v, "create") for k, v in desired_spec(resource, self.renderer).items()]
            if isinstance(resource, Volume) and resource.image is not None:  # a URL source: what is fetched
                fields.append(FieldChange("image", None, resource.image.as_record(), "create"))
            self.add(resource, Action.CREATE, Reason.MISSING, [], fields, deps)
            return
        if not self.owned(obj, resource.address, host):
            if not self.imported(resource, obj, host):
                self.clash(resource, obj, host, resource.kind, resource.key)
            return
        desired = desired_spec(resource, self.renderer)
        record = self.store.get(host.uri, resource.address) if resource.kind == "volume" else None
        if record is not None and record.get("pending") and record.get("stage") == "upload":
            # ours, recovered from an interrupted apply, but its bytes may be incomplete
            fields = [FieldChange(k, obj.spec.get(k), v, Policy.REPLACE.value) for k, v in desired.items()]
            change = self.add(resource, Action.REPLACE, Reason.INTERRUPTED, [], fields, deps, obj)
            change.destructive = change_risk("volume", Action.REPLACE, obj.spec, [])
            return
        diffs = [
            FieldChange(name, before, value, field_policy(resource.kind, name, before, value).value)
            for name, value in desired.items()
            if (before := obj.spec.get(name)) != value
        ]
        if not diffs:
            return
        refused = [d for d in diffs if d.policy == Policy.IMMUTABLE]
        for d in refused:
            hint = IMMUTABLE_HINTS.get((resource.kind, d.field), "declare a new resource instead")
            self.errors.append(
                FieldError(resource.address, d.field, f"cannot change from {d.before!r} to {d.after!r}; {hint}")
            )
        if refused:
            return
        action, reason, deciding = choose_action(resource.kind, diffs, obj.spec, desired)
        change = self.add(resource, action, reason, deciding, diffs, deps, obj)
        users = running_users(host, resource.key) if resource.kind == "network" else []
        change.destructive = change_risk(resource.kind, action, obj.spec, users)

    def imported(self, resource: Resource, obj: ObservedObject, host: HostState) -> bool:
        """An object `virtplan import` declared for this stack, not adopted yet: virtplan
        changes nothing on it, so it must match the stack exactly (then the plan is empty)."""
        record = self.store.get(host.uri, resource.address)
        if not record or not record.get("claim") or record.get("claim") != obj.uuid:
            return False
        desired = desired_spec(resource, self.renderer)
        differ = sorted(k for k, v in desired.items() if obj.spec.get(k) != v)
        if differ:
            self.errors.append(FieldError(
                resource.address, differ[0],
                f"was imported but is not adopted, and the host differs in {', '.join(differ)}; virtplan changes "
                "only what it owns: make the stack match the host, run `virtplan adopt`, then change it",
            ))  # fmt: skip
        return True

    def check_seed(self, vm: VM, host: HostState) -> None:
        if vm.cloud_init is None or vm.seed_pool is None:
            return
        key = f"{vm.seed_pool.name}/{vm.seed_volume_name}"
        address = f"{host.name}/volume/{key}"
        obj = host.get("volume", key)
        if obj is not None and not self.owned(obj, address, host):
            self.clash(address, obj, host, "volume", key)

    def add(
        self,
        resource: Resource,
        action: Action,
        reason: Reason,
        deciding: list[str],
        diffs: list[FieldChange],
        deps: list[str],
        obj: ObservedObject | None = None,
    ) -> ResourceChange:
        assert resource.host is not None
        change = ResourceChange(
            resource.address, resource.host.name, resource.kind, resource.key, action, reason, diffs,
            depends_on=deps, fingerprint=obj.fingerprint if obj else None, reason_fields=deciding,
        )  # fmt: skip
        self.changes[resource.address] = change
        return change

    # observed side
    def deletions(self, declared: set[str], reason: Reason) -> list[ResourceChange]:
        out = []
        seeds = self.seed_addresses()
        for host in self.observed.values():
            for obj in host.objects.values():
                address = f"{host.name}/{obj.kind}/{obj.key}"
                if address in declared or address in seeds or not self.owned(obj, address, host):
                    continue
                if obj.kind == "volume" and self.layer_kept(address, host, declared):
                    continue
                change = ResourceChange(address, host.name, obj.kind, obj.key, Action.DELETE, reason,
                                        fingerprint=obj.fingerprint)  # fmt: skip
                out.append(change)
        gone = {c.address for c in out}
        for change in out:
            where = self.observed[change.host]
            found = where.get(change.kind, change.key)
            assert found is not None
            users = running_users(where, found.key) if found.kind == "network" else []
            users = [u for u in users if f"{where.name}/vm/{u}" not in gone]
            change.destructive = delete_risk(found.kind, found.spec, users)
        return out

    def layer_kept(self, address: str, host: HostState, declared: set[str]) -> bool:
        """A copy-on-write layer of a declared volume (see virtplan.apply.layers) goes with it."""
        record = self.store.get(host.uri, address)
        return bool(record and record.get("layer_of") in declared)

    def seed_addresses(self) -> set[str]:
        seeds = set()
        for host in self.observed.values():
            for address, record in self.store.records(host.uri).items():
                if record.get("seed_of") or record.get("log_of"):
                    seeds.add(address)  # owned through their VM, deleted with it
        return seeds


def running_users(host: HostState, network: str) -> list[str]:
    """Running VMs on `host` (as observed) with a NIC on `network`."""
    return sorted(
        o.key
        for o in host.of_kind("vm")
        if o.spec.get("state") == "running" and any(n.get("network") == network for n in o.spec.get("nics", []))
    )


def _order_deletions(
    deletes: list[ResourceChange], observed: dict[str, HostState], kept: dict[str, ResourceChange]
) -> list[ResourceChange]:
    """VMs first, then volumes (overlays before what they back), pools, networks; each
    waits for the changes of the objects that still use it."""
    by_addr = {d.address: d for d in deletes}
    files: dict[tuple[str, str], set[str]] = {}  # (host, vm) -> the files its disks use, parsed once

    def uses_file(host: HostState, vm: ObservedObject, path: str | None) -> bool:
        if (host.name, vm.key) not in files:
            files[(host.name, vm.key)] = disk_files(vm.xml)
        return path in files[(host.name, vm.key)]

    for d in deletes:
        host = observed[d.host]
        users: list[str] = []
        if d.kind == "volume":
            path = host.get("volume", d.key).uuid  # type: ignore[union-attr]
            users += [f"{d.host}/vm/{o.key}" for o in host.of_kind("vm")
                      if any(x.get("volume") == d.key for x in o.spec.get("disks", []))]  # fmt: skip
            users += [f"{d.host}/volume/{o.key}" for o in host.of_kind("volume") if o.spec.get("backing") == path]
            users += [f"{d.host}/vm/{o.key}" for o in host.of_kind("vm") if uses_file(host, o, path)]  # a layer
            users += [f"{d.host}/vm/{o.key}" for o in host.of_kind("vm")
                      if path in (o.spec.get("kernel"), o.spec.get("initrd"))]  # direct kernel boot  # fmt: skip
        elif d.kind == "pool":
            users += [
                a
                for a, x in by_addr.items()
                if x.kind == "volume" and x.host == d.host and x.key.startswith(d.key + "/")
            ]
        elif d.kind == "network":
            users += [f"{d.host}/vm/{o.key}" for o in host.of_kind("vm")
                      if any(n.get("network") == d.key for n in o.spec.get("nics", []))]  # fmt: skip
        elif d.kind == "vm":  # its snapshots go first
            users += [a for a, x in by_addr.items() if x.kind == "snapshot" and x.key.startswith(d.key + "/")]
        d.depends_on = sorted({u for u in users if u in by_addr or u in kept} - {d.address})
    rank = {"snapshot": 0, "vm": 0, "volume": 1, "pool": 2, "network": 2}
    return sorted(deletes, key=lambda d: (rank[d.kind], d.address))


def _wait_for_what_frees(
    kept: dict[str, ResourceChange], deletes: list[ResourceChange], stack: Stack, observed: dict[str, HostState]
) -> None:
    """A VM that is created (or redefined) with a volume that a VM being deleted still uses
    waits for that delete: two running VMs must never share a disk (a renamed VM keeping
    its disk is "delete old, create new")."""
    declared = stack.by_address()
    vm_deletes = [d for d in deletes if d.kind == "vm"]
    if not vm_deletes:
        return
    for change in kept.values():
        resource = declared.get(change.address)
        if not isinstance(resource, VM) or change.action == Action.DELETE:
            continue
        wanted = {d.volume.key for d in resource.disks if isinstance(d.volume, Volume)}
        wanted |= {v.key for v in (resource.kernel, resource.initrd) if isinstance(v, Volume)}
        for d in vm_deletes:
            obj = observed[d.host].get("vm", d.key)
            if d.host != change.host or obj is None:
                continue
            used = {x.get("volume") for x in obj.spec.get("disks", [])}
            if wanted & used and d.address not in change.depends_on:
                change.depends_on.append(d.address)


def make_plan(
    stack: Stack,
    renderer: Renderer,
    observed: dict[str, HostState],
    store: Records,
    destroy: bool = False,
) -> Plan:
    """Compute the plan that makes the hosts match `stack` (or removes it, with destroy).

    Raises PlanError, listing every clash and refused change, if no safe plan exists.
    """
    from virtplan._version import __version__

    planner = _Planner(stack, renderer, observed, store)
    if not destroy:
        for resource in ordered(stack.managed()):
            planner.plan_resource(resource)
    if planner.errors:
        raise PlanError(planner.errors)
    kept = planner.changes
    declared = set() if destroy else set(stack.by_address())
    reason = Reason.DESTROY_REQUESTED if destroy else Reason.REMOVED_FROM_STACK
    deletes = _order_deletions(planner.deletions(declared, reason), observed, kept)
    _wait_for_what_frees(kept, deletes, stack, observed)
    vm_deletes = [d for d in deletes if d.kind == "vm"]
    other_deletes = [d for d in deletes if d.kind != "vm"]
    changes = vm_deletes + list(kept.values()) + other_deletes
    hosts = {h.name: h.uri for h in stack.hosts}
    return Plan(stack.name, stack.source_hash, changes, hosts, __version__)
