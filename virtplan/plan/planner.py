"""The planner: desired stack + observed hosts + ownership record -> Plan. Pure: no I/O.

A Plan is data. Every change has an address, one action from a closed set, the
field-level before/after with each field's policy, a reason, a destructive mark where
data or uptime is at risk, the addresses it must wait for, and the fingerprint of the
observed object it was computed from.
"""

from __future__ import annotations

import graphlib
from typing import Any

from virtplan.documents import fastspec
from virtplan.documents.parse import Spec, parse
from virtplan.documents.render import Renderer
from virtplan.errors import FieldError
from virtplan.hosts.chains import disk_files
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import Records, RecordsRead
from virtplan.model import VM, Network, Pool, Resource, Stack, Volume
from virtplan.model.order import dependency_rounds
from virtplan.plan.changes import Action, FieldChange, Plan, PlanError, Reason, ResourceChange
from virtplan.plan.moves import Move, find_moves
from virtplan.plan.ownership import owned_objects, owner_stack
from virtplan.plan.policy import IMMUTABLE_HINTS, Policy, change_risk, choose_action, delete_risk, field_policy

__all__ = [  # the plan's data types and ownership helpers live beside; callers may import them from here
    "Action", "FieldChange", "Plan", "PlanError", "Reason", "ResourceChange",
    "desired_spec", "make_plan", "ordered", "owned_objects", "owner_stack", "rendered_spec", "running_users",
]  # fmt: skip

KIND_ORDER = {"network": 0, "pool": 0, "volume": 1, "vm": 2, "snapshot": 3}
#: Kinds `--replace` can replace (a pool holds volumes; a snapshot is a moment).
REPLACEABLE = {"vm", "network", "volume"}
#: Runtime fields a host may not report (libvirt's test driver has no network ports): not judged then.
RUNTIME_ONLY = {"unplugged"}


def differing(observed: Spec, wanted: Spec) -> list[str]:
    """The fields of `wanted` whose value the observed spec does not have, in `wanted`'s
    order: the one comparison of the planner, the importer and drift (a runtime field the
    host did not report is not judged)."""
    get = observed.get
    return [
        name for name, value in wanted.items() if get(name) != value and (name in observed or name not in RUNTIME_ONLY)
    ]


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
    if resource.kind == "snapshot":  # no XML of its own: what kind of snapshot it is
        return fastspec.desired(resource, renderer)
    if renderer.stack.template_dir is not None:
        spec = rendered_spec(resource, renderer)
    else:
        spec = fastspec.desired(resource, renderer)
    if isinstance(resource, Volume) and resource.format == "qcow2" and resource.source is None:
        spec["capacity"] = -(-spec["capacity"] // 512) * 512  # qemu-img rounds up to sectors
    if isinstance(resource, (VM, Network, Volume)):  # a pool's fields are all pinned
        for name in spec.keys() - resource.declared():  # (a fresh dict: most of its fields stay)
            del spec[name]
    if isinstance(resource, VM):
        spec.update(state=resource.state, autostart=resource.autostart, unplugged=[])
    elif isinstance(resource, (Network, Pool)):
        spec.update(autostart=resource.autostart, active=True)
    elif not isinstance(resource, Volume):  # pragma: no cover - the model has no other kinds
        raise TypeError(resource)
    return spec


def ordered(resources: list[Resource]) -> list[Resource]:
    """Dependencies first, in rounds: a resource comes in the round after the last of its
    dependencies (the first round: those without any); within a round, networks and pools,
    then volumes, then VMs, in declaration order. Raises graphlib.CycleError on a cycle."""
    rounds = dependency_rounds(resources)
    return sorted(resources, key=lambda r: (rounds[id(r)], KIND_ORDER[r.kind]))  # stable: declaration order kept


# -- the planner ------------------------------------------------------------------------
class _Planner:
    def __init__(
        self, stack: Stack, renderer: Renderer, observed: dict[str, HostState], store: Records, replace: set[str]
    ):
        self.stack, self.renderer, self.observed, self.store = stack, renderer, observed, store
        self.read = RecordsRead(store)  # the records planning only looks at, not copied one by one
        self.replace = replace
        self.errors: list[FieldError] = []
        self.changes: dict[str, ResourceChange] = {}
        self.moved: set[str] = set()  # old addresses of objects renamed (renamed_from): not deleted
        self.network_renames: dict[str, dict[str, str]] = {}  # host -> old network name -> new
        self.moves: dict[str, Move] = {}  # VMs that change host, by their new address
        self.moved_disks: dict[str, str] = {}  # a disk the move makes on the destination -> the VM's address
        self.move_deps: dict[str, list[str]] = {}  # VM address -> changes its moved disks wait for
        self.aliases: dict[str, str] = {}  # a source address a move takes care of -> the move's address
        self.unknown_vms: set[str] = set()  # VMs that may be on a host that was not read
        self._unknown_disks: set[str] | None = None

    def unknown(self, resource: Resource) -> bool:
        """A VM (or one of its disks) that may be on a host that was not read."""
        if not self.unknown_vms:  # (every host was read: the usual plan)
            return False
        if isinstance(resource, VM):
            return resource.name in self.unknown_vms
        return resource.key in self.unknown_disks()

    def unknown_disks(self) -> set[str]:
        """The volume keys of the disks of `unknown_vms` (worked out once: planning asks per object)."""
        if self._unknown_disks is None:
            self._unknown_disks = {
                d.volume.key for vm in self.stack.vms if vm.name in self.unknown_vms for d in vm.disks
            }  # fmt: skip
        return self._unknown_disks

    def find_moves(self) -> None:
        self.moves, errors = find_moves(
            self.stack,
            self.renderer,
            self.observed,
            self.store,
            desired_spec,
            self.unknown_vms,
        )
        self.errors += errors
        for address, move in self.moves.items():
            for disk in move.disks:
                if disk.create:
                    self.moved_disks[disk.dest_address] = address
            for alias in move.aliases:
                self.aliases[alias] = address

    def owned(self, obj: ObservedObject, address: str, host: HostState) -> bool:
        return owner_stack(obj, address, host.uri, self.read, self.stack.key) == self.stack.key

    def clash(self, resource: Resource | str, obj: ObservedObject, host: HostState, kind: str, key: str) -> None:
        address = resource if isinstance(resource, str) else resource.address
        other = owner_stack(obj, address, host.uri, self.read, self.stack.key)
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
        address = resource.address
        try:
            self._plan_resource(resource, address)
        except ValueError as exc:  # what the host cannot do (arch, machine, domain type)
            self.errors.append(FieldError(address, getattr(exc, "field", "host"), str(exc)))
        if address in self.changes:
            self.check_bridges(resource)

    def check_bridges(self, resource: Resource) -> None:
        """A NIC on a host bridge, or a network in bridge mode, needs that bridge on the host:
        refused at plan time (apply would fail half-way, after making what comes first)."""
        assert resource.host is not None
        host = self.observed[resource.host.name]
        if host.interfaces is None:
            return  # the host does not list its interfaces: libvirt says so at start
        if isinstance(resource, VM):
            wanted = [(f"nics[{i}].bridge", n.bridge) for i, n in enumerate(resource.nics) if n.bridge]
        elif isinstance(resource, Network) and resource.mode == "bridge" and resource.bridge:
            wanted = [("bridge", resource.bridge)]
        else:
            return
        for where, bridge in wanted:
            if bridge not in host.interfaces:
                self.errors.append(FieldError(resource.address, where, (
                    f"host {host.name!r} has no interface {bridge!r} (it has: {', '.join(sorted(host.interfaces))}); "
                    "create the bridge on the host first, or use a virtplan Network"
                )))  # fmt: skip

    def _plan_resource(self, resource: Resource, address: str) -> None:
        assert resource.host is not None
        host = self.observed.get(resource.host.name)
        if host is None or self.unknown(resource):
            return  # its host (or one it may be on) was not read: `plan --keep-going`
        obj = host.get(resource.kind, resource.key)
        # the changes it waits for (none yet: a plan without changes works none of them out)
        deps = [a for a in (d.address for d in resource.dependencies()) if a in self.changes] if self.changes else []
        if address in self.moved_disks and obj is None:  # made by its VM's move
            self.move_deps.setdefault(self.moved_disks[address], []).extend(deps)
            return
        if isinstance(resource, VM):
            self.check_seed(resource, host)
            self.check_existing_networks(resource, host)
        if isinstance(resource, VM) and address in self.moves:
            self.add_move(resource, self.moves[address], deps)
            return
        if obj is None and resource.renamed_from:
            old = self.rename_source(resource, host)
            if old is not None:
                self.plan_rename(resource, old, host, deps)
                return
        if obj is None:
            spec = desired_spec(resource, self.renderer)
            fields = [FieldChange(k, None, v, "create") for k, v in spec.items() if k not in RUNTIME_ONLY]
            if isinstance(resource, Volume) and resource.image is not None:  # a URL source: what is fetched
                fields.append(FieldChange("image", None, resource.image.as_record(), "create"))
            self.add(resource, Action.CREATE, Reason.MISSING, [], fields, deps)
            return
        if not self.owned(obj, address, host):
            if not self.imported(resource, obj, host):
                self.clash(resource, obj, host, resource.kind, resource.key)
            return
        desired = desired_spec(resource, self.renderer)
        if obj.problem is not None:
            self.redefine_unreadable(resource, obj, desired, deps)
            return
        record = self.read.get(host.uri, address) if resource.kind == "volume" else None
        if record is not None and record.get("pending") and record.get("stage") == "upload":
            # ours, recovered from an interrupted apply, but its bytes may be incomplete
            fields = [FieldChange(k, obj.spec.get(k), v, Policy.REPLACE.value) for k, v in desired.items()]
            change = self.add(resource, Action.REPLACE, Reason.INTERRUPTED, [], fields, deps, obj)
            change.destructive = change_risk("volume", Action.REPLACE, obj.spec, [])
            return
        diffs = self.diffs(resource, obj, desired, host)
        if address in self.replace:
            if resource.kind not in REPLACEABLE:
                self.errors.append(FieldError(address, "--replace", f"a {resource.kind} cannot be replaced"))
                return
            change = self.add(resource, Action.REPLACE, Reason.REPLACE_REQUESTED, [], diffs, deps, obj)
            users = running_users(host, resource.key) if resource.kind == "network" else []
            change.destructive = change_risk(resource.kind, Action.REPLACE, obj.spec, users, desired)
            return
        if not diffs:
            return
        refused = [d for d in diffs if d.policy == Policy.IMMUTABLE]
        for d in refused:
            hint = IMMUTABLE_HINTS.get((resource.kind, d.field), "declare a new resource instead")
            self.errors.append(FieldError(address, d.field, f"cannot change from {d.before!r} to {d.after!r}; {hint}"))
        if refused:
            return
        action, reason, deciding = choose_action(resource.kind, diffs, obj.spec, desired)
        change = self.add(resource, action, reason, deciding, diffs, deps, obj)
        users = running_users(host, resource.key) if resource.kind == "network" else []
        change.destructive = change_risk(resource.kind, action, obj.spec, users, desired)

    def diffs(self, resource: Resource, obj: ObservedObject, desired: Spec, host: HostState) -> list[FieldChange]:
        """The declared fields that differ from the observed object, each with its policy
        (NICs that only follow their network's rename are re-plugged live)."""
        before = obj.spec
        uploaded = isinstance(resource, Volume) and resource.source is not None
        out = [
            FieldChange(name, before.get(name), desired[name],
                        field_policy(resource.kind, name, before.get(name), desired[name], uploaded=uploaded).value)
            for name in differing(before, desired)
        ]  # fmt: skip
        renames = self.network_renames.get(host.name, {})
        for fc in out:
            if fc.field == "nics" and renames and _follow_renames(fc.before or [], fc.after or [], renames):
                fc.policy = Policy.LIVE.value
        return out

    # renames (renamed_from)
    def rename_source(self, resource: Resource, host: HostState) -> ObservedObject | None:
        """The object `resource` is renamed from, if it is on the host and this stack's."""
        old = str(resource.renamed_from)
        key = f"{resource.key.rsplit('/', 1)[0]}/{old}" if resource.kind == "volume" else old
        obj = host.get(resource.kind, key)
        if obj is None:
            return None  # renamed already (or never there): made as declared
        if not self.owned(obj, f"{host.name}/{resource.kind}/{key}", host):
            self.errors.append(FieldError(resource.address, "renamed_from", (
                f"the {resource.kind} {key!r} on host {host.name!r} is not this stack's: virtplan renames only "
                "what it owns"
            )))  # fmt: skip
            return None
        return obj

    def plan_rename(self, resource: Resource, obj: ObservedObject, host: HostState, deps: list[str]) -> None:
        """A rename, keeping the object's identity (UUID, MACs, disks, data), with the
        declared changes that come along; what each kind's rename costs is in its reason."""
        desired = desired_spec(resource, self.renderer)
        diffs = self.diffs(resource, obj, desired, host)
        old_address = f"{host.name}/{resource.kind}/{obj.key}"
        refuse = [d.field for d in diffs if d.policy in (Policy.IMMUTABLE, Policy.REPLACE)]
        if resource.kind == "network":
            refuse = []  # a network is defined again anyway: anything may change with it
        elif resource.kind == "volume":
            refuse = [d.field for d in diffs]
            if obj.spec.get("backing"):
                refuse.append("backing")
            users = [o.key for o in host.of_kind("vm") if o.spec.get("state") == "running"
                     and any(d.get("volume") == obj.key for d in o.spec.get("disks", []))]  # fmt: skip
            if users:
                self.errors.append(FieldError(resource.address, "renamed_from", (
                    f"libvirt cannot rename a volume, so virtplan copies it, which it cannot do under a running VM "
                    f"({', '.join(users)}): stop it first (state='stopped'), apply, then rename"
                )))  # fmt: skip
                return
        elif any(r.get("vm") == old_address and r.get("kind") in ("snapshot", "freeze")
                 for r in self.store.records(host.uri).values()):  # fmt: skip
            refuse.append("snapshots")
        if refuse:
            self.errors.append(FieldError(resource.address, "renamed_from", (
                f"a {resource.kind} renamed together with a change of {', '.join(sorted(set(refuse)))}: rename it "
                "first (apply), then change it"
            )))  # fmt: skip
            return
        if resource.kind == "vm":
            running = obj.spec.get("state") == "running"
            action = Action.RESTART if running and desired.get("state") == "running" else Action.UPDATE
        elif resource.kind == "network":
            action = Action.RESTART if obj.spec.get("active") else Action.UPDATE
            self.network_renames.setdefault(host.name, {})[obj.key] = resource.key
        else:
            action = Action.UPDATE
        fields = [FieldChange("name", obj.key, resource.key, "rename"), *diffs]
        change = self.add(resource, action, Reason.RENAMED, ["name"], fields, deps, obj)
        change.moved_from = obj.key
        users = running_users(host, obj.key) if resource.kind == "network" else []
        change.destructive = (
            change_risk(resource.kind, action, obj.spec, users, desired) if resource.kind != "volume" else None
        )
        self.moved.add(old_address)

    def redefine_unreadable(self, resource: Resource, obj: ObservedObject, desired: Spec, deps: list[str]) -> None:
        """An object of ours whose definition libvirt returns as XML that does not parse (it
        stored a value it cannot write back, e.g. a VNC listen that is not an address): a VM
        is defined again from the stack, which repairs it; other kinds are left as they are
        (drift reports them)."""
        if not isinstance(resource, VM):
            return
        field = obj.problem_field
        diffs = [FieldChange(field, obj.problem, desired.get(field, "(rendered from the stack)"), Policy.RESTART.value)]
        for name in ("state", "autostart"):
            before = obj.spec.get(name)
            if name in desired and before != desired[name]:
                policy = field_policy("vm", name, before, desired[name]).value
                diffs.append(FieldChange(name, before, desired[name], policy))
        running = obj.spec.get("state") == "running" and desired.get("state") == "running"
        action, reason = (Action.RESTART, Reason.NEEDS_RESTART) if running else (Action.UPDATE, Reason.FIELDS_CHANGED)
        change = self.add(resource, action, reason, [field], diffs, deps, obj)
        change.destructive = change_risk("vm", action, obj.spec, [])

    def imported(self, resource: Resource, obj: ObservedObject, host: HostState) -> bool:
        """An object `virtplan import` declared for this stack, not adopted yet: virtplan
        changes nothing on it, so it must match the stack exactly (then the plan is empty)."""
        record = self.store.get(host.uri, resource.address)
        if not record or not record.get("claim") or record.get("claim") != obj.uuid:
            return False
        desired = desired_spec(resource, self.renderer)
        differ = sorted(differing(obj.spec, desired))
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

    def check_existing_networks(self, vm: VM, host: HostState) -> None:
        """A NIC on a network the stack does not manage: the network must be on the host
        (and active, for a running VM); virtplan never creates or starts it."""
        for i, nic in enumerate(vm.nics):
            net = nic.network
            if net is None or net.existing is not True:
                continue
            found = host.get("network", net.name)
            if found is None:
                self.errors.append(FieldError(vm.address, f"nics[{i}].network", (
                    f"network {net.name!r} does not exist on host {host.name!r}; Network({net.name!r}, existing=True) "
                    "refers to a network virtplan does not manage: create it there, or drop existing=True to let "
                    "the stack manage it")))  # fmt: skip
            elif vm.state == "running" and not found.spec.get("active"):
                self.errors.append(FieldError(vm.address, f"nics[{i}].network", (
                    f"network {net.name!r} on host {host.name!r} is not active, so the VM could not start; "
                    f"start it (virsh net-start {net.name}): virtplan never changes a network it does not manage"
                )))  # fmt: skip

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
        if isinstance(resource, VM) and action in (Action.CREATE, Action.MIGRATE):
            change.placement = resource.placed
        self.changes[resource.address] = change
        return change

    def replug(self) -> None:
        """A network that restarts (a restart, a replacement, a start after it was stopped)
        drops the ports of every guest on it, and libvirt does not plug them back: each
        running VM that stays running on it gets its NICs on it re-plugged live, after the
        network's change (an update of its own, or added to the VM's update)."""
        restarting = {
            c.address: c for c in self.changes.values()
            if c.kind == "network" and (c.action in (Action.RESTART, Action.REPLACE) or c.reason == Reason.RENAMED
                                        or any(fc.field == "active" and fc.after for fc in c.changes))
        }  # fmt: skip
        if not restarting:
            return
        for resource in self.stack.managed():
            if not isinstance(resource, VM) or resource.state != "running" or resource.host is None:
                continue
            if resource.host.name not in self.observed or resource.address in self.moves:
                continue  # not read (`--keep-going`), or migrated: plugged afresh on its new host
            host = self.observed[resource.host.name]
            obj = host.get("vm", resource.key)
            change = self.changes.get(resource.address)
            if obj is None or obj.spec.get("state") != "running" or (change and change.action != Action.UPDATE):
                continue  # created, stopped, restarted or replaced: plugged afresh
            nets = [n.network for n in resource.nics if n.network is not None and n.network.address in restarting]
            names = {n.name for n in nets} | {str(restarting[n.address].moved_from) for n in nets
                                              if restarting[n.address].moved_from}  # fmt: skip
            macs = sorted({nic["mac"] for nic in obj.spec.get("nics", [])
                           if nic.get("network") in names and nic.get("mac")})  # fmt: skip
            if not macs:
                continue
            deps = sorted({n.address for n in nets})
            if change is None:
                fields = [FieldChange("unplugged", macs, [], Policy.LIVE.value)]
                change = self.add(resource, Action.UPDATE, Reason.REPLUG, sorted({n.name for n in nets}), fields, deps,
                                  obj)  # fmt: skip
                continue
            known = next((fc for fc in change.changes if fc.field == "unplugged"), None)
            if known is None:
                change.changes.append(FieldChange("unplugged", macs, [], Policy.LIVE.value))
                change.reason_fields = sorted({*change.reason_fields, "unplugged"})
            else:
                known.before = sorted({*(known.before or []), *macs})
            change.depends_on += [d for d in deps if d not in change.depends_on]

    def add_move(self, vm: VM, move: Move, deps: list[str]) -> None:
        """A `migrate` change on the destination: the host it comes from, the power state it
        goes through, what it copies; destructive only when a running VM cannot move live."""
        fields = [FieldChange("host", move.source.name, vm.host.name if vm.host else None, "migrate")]
        before = move.obj.spec.get("state")
        if before != vm.state:
            fields.append(FieldChange("state", before, vm.state, Policy.LIVE.value))
        deps = list(dict.fromkeys([*deps, *self.move_deps.get(vm.address, [])]))
        change = self.add(vm, Action.MIGRATE, Reason.HOST_CHANGED, ["host"], fields, deps, move.obj)
        change.move = move.describe()
        if move.stop and vm.state == "running":
            change.destructive = (
                f"the running VM is stopped while its disks are copied, then started on {change.host}: it cannot "
                f"move live ({move.why_not_live})"
            )

    # observed side
    def deletions(self, declared: set[str], reason: Reason) -> list[ResourceChange]:
        out = []
        seeds = self.seed_addresses()
        for host in self.observed.values():
            for obj in host.objects.values():
                address = f"{host.name}/{obj.kind}/{obj.key}"
                if address in declared or address in seeds or address in self.aliases or address in self.moved:
                    continue  # declared, owned through its VM, moved away by a migrate, or renamed
                if (obj.kind == "vm" and obj.key in self.unknown_vms) or (
                    obj.kind == "volume" and obj.key in self.unknown_disks()
                ):
                    continue  # a VM whose place cannot be known now (a host was not read)
                if not self.owned(obj, address, host):
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
            for address, record in self.store.view(host.uri).items():
                if record.get("seed_of") or record.get("log_of"):
                    seeds.add(address)  # owned through their VM, deleted with it
        return seeds


def _follow_renames(before: list[Any], after: list[Any], renames: dict[str, str]) -> bool:
    """Whether the NICs `after` are the NICs `before` with only their networks renamed."""
    if len(before) != len(after) or before == after:
        return False
    for b, a in zip(before, after, strict=True):
        moved = {**b, "network": renames.get(b.get("network") or "", b.get("network"))}
        if moved != a:
            return False
    return True


def running_users(host: HostState, network: str) -> list[str]:
    """Running VMs on `host` (as observed) with a NIC on `network`."""
    return sorted(
        o.key
        for o in host.of_kind("vm")
        if o.spec.get("state") == "running" and any(n.get("network") == network for n in o.spec.get("nics", []))
    )


def _order_deletions(
    deletes: list[ResourceChange],
    observed: dict[str, HostState],
    kept: dict[str, ResourceChange],
    aliases: dict[str, str] | None = None,
) -> list[ResourceChange]:
    """VMs first, then volumes (overlays before what they back), pools, networks; each
    waits for the changes of the objects that still use it (a network only for the VMs
    deleted with it: libvirt lets a network go under a running guest, and a guest that
    moves to another network may need that network's bridge, which this one holds; for an
    object a VM's move takes away, `aliases`, that move, on the other host)."""
    aliases = aliases or {}
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
        elif d.kind == "network":  # VMs deleted with it (or moved away) go first; the others' own changes re-plug them
            users += [f"{d.host}/vm/{o.key}" for o in host.of_kind("vm")
                      if any(n.get("network") == d.key for n in o.spec.get("nics", []))
                      and (f"{d.host}/vm/{o.key}" in by_addr or f"{d.host}/vm/{o.key}" in aliases)]  # fmt: skip
        elif d.kind == "vm":  # its snapshots go first
            users += [a for a, x in by_addr.items() if x.kind == "snapshot" and x.key.startswith(d.key + "/")]
        users += [a for a in aliases if a.startswith(f"{d.host}/volume/{d.key}/")] if d.kind == "pool" else []
        found = {aliases.get(u, u) for u in users if u in by_addr or u in kept or u in aliases}
        d.depends_on = sorted(found - {d.address})
    rank = {"snapshot": 0, "vm": 0, "volume": 1, "pool": 2, "network": 2}
    return sorted(deletes, key=lambda d: (rank[d.kind], d.address))


def _wait_for_what_frees(
    kept: dict[str, ResourceChange],
    deletes: list[ResourceChange],
    declared: dict[str, Resource],
    observed: dict[str, HostState],
) -> None:
    """A change that takes something another change of the plan gives up waits for that
    change: two running VMs must never share a disk (a renamed VM keeping its disk is
    "delete old, create new"; a disk moved from one VM to another is a detach and an
    attach), and libvirt refuses a network on a bridge or subnet another network holds and
    a pool at another pool's path (a renamed network or pool is "delete old, create new").

    What each change takes comes from the stack; what each gives up, from the host: the
    observed object, unless the stack keeps the same thing on it (`declared`: the stack's
    resources by address)."""
    changes = [*deletes, *kept.values()]
    # What each change gives up, indexed once (a plan of thousands of objects would
    # otherwise compare every pair): exact items by value, CIDRs (which overlap) apart.
    by_item: dict[tuple[str, str, tuple[str, str]], list[int]] = {}
    cidrs: dict[tuple[str, str], list[tuple[int, set[tuple[str, str]]]]] = {}
    for i, other in enumerate(changes):
        obj = observed[other.host].get(other.kind, other.key)
        if obj is None:
            continue
        given_up = _held(other.kind, obj.spec)
        still = declared.get(other.address)
        if still is not None and other.action != Action.DELETE and other.action != Action.REPLACE:
            given_up -= _taken(still)  # what the other keeps is not freed
        for item in given_up:
            if item[0] == "cidr":
                cidrs.setdefault((other.host, other.kind), []).append((i, {item}))
            else:
                by_item.setdefault((other.host, other.kind, item), []).append(i)
    for change in kept.values():
        resource = declared.get(change.address)
        if resource is None or change.action == Action.DELETE:
            continue
        wanted = _taken(resource)
        if not wanted:
            continue
        found = {i for item in wanted for i in by_item.get((change.host, change.kind, item), [])}
        found |= {i for i, held in cidrs.get((change.host, change.kind), []) if _clash(wanted, held)}
        for i in sorted(found):
            other = changes[i]
            if other is not change and other.address not in change.depends_on:
                change.depends_on.append(other.address)


def _taken(resource: Resource) -> set[tuple[str, str]]:
    """What a declared resource holds that no other object of its kind on the host may."""
    if isinstance(resource, VM):
        out = {("volume", d.volume.key) for d in resource.disks if isinstance(d.volume, Volume)}
        return out | {("volume", v.key) for v in (resource.kernel, resource.initrd) if isinstance(v, Volume)}
    if isinstance(resource, Network):  # a host bridge ("bridge" mode) is shared, not held
        out = {("bridge", resource.bridge_name)} if resource.mode != "bridge" else set()
        return out | ({("cidr", resource.cidr)} if resource.cidr else set())
    if isinstance(resource, Pool):
        return {("path", resource.path.rstrip("/"))}
    return set()


def _held(kind: str, spec: Spec) -> set[tuple[str, str]]:
    """The same, for an observed object."""
    if kind == "vm":
        out = {("volume", d["volume"]) for d in spec.get("disks", []) if d.get("volume")}
        return out | {("volume", v) for v in (spec.get("kernel"), spec.get("initrd")) if v}
    if kind == "network":
        out = {("bridge", spec["bridge"])} if spec.get("bridge") and spec.get("mode") != "bridge" else set()
        return out | ({("cidr", spec["cidr"])} if spec.get("cidr") else set())
    if kind == "pool" and spec.get("path"):
        return {("path", str(spec["path"]).rstrip("/"))}
    return set()


def _clash(wanted: set[tuple[str, str]], held: set[tuple[str, str]]) -> bool:
    if wanted & held:
        return True
    import ipaddress

    mine = [ipaddress.ip_network(v) for k, v in wanted if k == "cidr"]
    theirs = [ipaddress.ip_network(v) for k, v in held if k == "cidr"]
    return any(a.overlaps(b) for a in mine for b in theirs)


def _check_waits(changes: list[ResourceChange]) -> None:
    """Refuse a plan whose changes wait for each other (two networks swapping bridges):
    apply could start none of them."""
    graph = {c.address: set(c.depends_on) for c in changes}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(dict.fromkeys(exc.args[1]))
        raise PlanError(
            [
                FieldError(
                    exc.args[1][0],
                    "name",
                    (
                        f"these changes wait for each other ({cycle}): each takes what another gives up; "
                        "make the change in two applies (first move one of them out of the way)"
                    ),
                )
            ]
        ) from None


def make_plan(
    stack: Stack,
    renderer: Renderer,
    observed: dict[str, HostState],
    store: Records,
    destroy: bool = False,
    unknown_vms: set[str] | None = None,
    *,
    replace: list[str] | None = None,
    targets: list[str] | None = None,
) -> Plan:
    """Compute the plan that makes the hosts match `stack` (or removes it, with destroy).
    `replace` (`--replace`) replaces those declared objects even though they match;
    `targets` (`--target`) keeps only the changes of those addresses and what they wait for.

    Hosts missing from `observed` (not reachable: `plan --keep-going`) are not planned, nor
    are the VMs in `unknown_vms` (placed VMs that may be on such a host) and their disks.

    Raises PlanError, listing every clash and refused change, if no safe plan exists.
    """
    from virtplan._version import __version__

    addresses = stack.by_address()
    unknown = [a for a in replace or [] if a not in addresses]
    unknown_targets = [a for a in targets or [] if a not in addresses and not _observed_address(a, observed)]
    if unknown or unknown_targets:
        raise PlanError(
            [FieldError(a, "--replace", "the stack declares no such resource (host/kind/name)") for a in unknown]
            + [FieldError(a, "--target", "neither the stack nor its hosts have it (host/kind/name)")
               for a in unknown_targets]
        )  # fmt: skip
    planner = _Planner(stack, renderer, observed, store, set(replace or []))
    planner.unknown_vms = set(unknown_vms or ())
    if not destroy:
        planner.find_moves()
        for resource in ordered(stack.managed()):
            planner.plan_resource(resource)
        planner.replug()
    if planner.errors:
        raise PlanError(planner.errors)
    kept = planner.changes
    reason = Reason.DESTROY_REQUESTED if destroy else Reason.REMOVED_FROM_STACK
    kept_addresses = set() if destroy else set(addresses)
    deletes = _order_deletions(planner.deletions(kept_addresses, reason), observed, kept, planner.aliases)
    _wait_for_what_frees(kept, deletes, addresses, observed)
    vm_deletes = [d for d in deletes if d.kind == "vm"]
    other_deletes = [d for d in deletes if d.kind != "vm"]
    changes = vm_deletes + list(kept.values()) + other_deletes
    _check_waits(changes)
    hosts = {h.name: h.uri for h in stack.hosts}
    plan = Plan(stack.name, stack.source_hash, changes, hosts, __version__, replace=list(replace or []))
    if targets:
        plan.keep_targets(targets)
    _refuse_taking_from_others(plan.changes, observed, set(targets or []))
    return plan


def _refuse_taking_from_others(changes: list[ResourceChange], observed: dict[str, HostState], named: set[str]) -> None:
    """A volume or network that VMs this stack does not manage use (hand-made, another
    stack's) is deleted or replaced only when the user names it (`--target`): otherwise the
    plan is refused, naming those VMs. Named, the change is destructive and says whose it was."""
    errors = []
    for change in changes:
        if change.kind not in ("volume", "network") or change.action not in (Action.DELETE, Action.REPLACE):
            continue
        host = observed[change.host]
        obj = host.get(change.kind, change.key)
        users = foreign_users(host, change.kind, change.key, obj.uuid if obj is not None else None)
        if not users:
            continue
        names = ", ".join(repr(u) for u in users)
        what = "a disk" if change.kind == "volume" else "its network"
        verb = "deleting" if change.action == Action.DELETE else "replacing"
        if change.address in named:
            note = f"used by VM {names}, which this stack does not manage: {what} is pulled from under it"
            change.destructive = f"{change.destructive}; {note}" if change.destructive else note
            continue
        errors.append(FieldError(change.address, "used by", (
            f"VM {names} uses it and this stack does not manage {'them' if len(users) > 1 else 'it'}: {verb} it "
            f"would pull {what} from under {'them' if len(users) > 1 else 'it'}. Detach it there first, or name it "
            f"to go ahead anyway: --target {change.address}"
        )))  # fmt: skip
    if errors:
        raise PlanError(errors)


def foreign_users(host: HostState, kind: str, key: str, path: str | None) -> list[str]:
    """The domains this stack does not manage (read but not parsed by observe) that use the
    volume `key` (at `path`) or the network `key`."""
    import xml.etree.ElementTree as ET

    from virtplan.documents.parse import parse_domain

    pool, _, name = key.partition("/")
    out = []
    for vm, xml in sorted(host.foreign.items()):
        if kind == "volume":
            if not ((path and path in xml) or (f"pool='{pool}'" in xml and f"volume='{name}'" in xml)):
                continue  # cheap: most domains do not mention it at all
            spec = parse_domain(ET.fromstring(xml))
            disks = {d.get("volume") for d in spec["disks"]}
            if key in disks or path in disks or path in (spec["kernel"], spec["initrd"]):
                out.append(vm)
        elif f"network='{key}'" in xml and any(
            n.get("network") == key for n in parse_domain(ET.fromstring(xml))["nics"]
        ):
            out.append(vm)
    return out


def _observed_address(address: str, observed: dict[str, HostState]) -> bool:
    """Whether `address` ("host/kind/key") names an object on one of the stack's hosts."""
    host_name, _, rest = address.partition("/")
    kind, _, key = rest.partition("/")
    host = observed.get(host_name)
    return host is not None and host.get(kind, key) is not None
