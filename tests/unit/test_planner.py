"""Planner cases as data: desired stack + observed state -> expected actions, reasons (with
the fields that decided them) and policies."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from builders import QEMU_FACTS, declare

from virtplan.documents.parse import owner_of, parse
from virtplan.documents.render import Renderer, volume_path
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import StateStore
from virtplan.model import NIC, VM, Host, Network, Pool, Stack, Volume, validate
from virtplan.plan.planner import KIND_ORDER, Action, PlanError, Reason, make_plan, ordered


def program(**overrides: Any) -> Stack:
    """The reference stack: a network, a pool, a volume and a running VM."""
    opts = {"memory": "256MiB", "max_memory": "1GiB", "vcpus": 1, "max_vcpus": 2, "state": "running"}
    opts.update(overrides.pop("vm", {}))
    with declare("s") as stack:
        Host("h", "test:///default", domain_type="qemu")
        net = Network("net", cidr="10.5.0.0/24", **overrides.pop("net", {}))
        pool = Pool("pool", path="/p")
        disk = Volume("disk", pool=pool, size=overrides.pop("size", "1GiB"))
        if not overrides.pop("no_vm", False):
            VM("vm", disks=[disk], nics=[NIC(net, ip="10.5.0.10")], **opts)
    validate(stack)
    return stack


def deployed(stack: Stack, store: StateStore, running: bool = True) -> HostState:
    """Observed state exactly as if `stack` had been applied."""
    r = Renderer(stack, {"h": QEMU_FACTS})
    host = HostState("h", "test:///default", QEMU_FACTS)
    for net in stack.networks:
        xml = r.network_xml(net)
        spec = parse("network", xml) | {"active": True, "autostart": net.autostart}
        host.objects[("network", net.name)] = ObservedObject(
            "network", net.name, "u-" + net.name, xml, spec, owner_of(ET.fromstring(xml))
        )
    for pool in stack.pools:
        spec = parse("pool", r.pool_xml(pool)) | {"active": True, "autostart": True}
        host.objects[("pool", pool.name)] = ObservedObject("pool", pool.name, "u-" + pool.name, "", spec)
        store.put("test:///default", pool.address, id="u-" + pool.name)
    for vol in stack.volumes:
        spec = parse("volume", r.volume_xml(vol))
        host.objects[("volume", vol.key)] = ObservedObject("volume", vol.key, volume_path(vol), "", spec)
        store.put("test:///default", vol.address, id=volume_path(vol))
    for vm in stack.vms:
        xml = r.domain_xml(vm)
        spec = parse("vm", xml) | {"state": "running" if running else "stopped", "autostart": vm.autostart}
        host.objects[("vm", vm.name)] = ObservedObject("vm", vm.name, "u-vm", xml, spec, owner_of(ET.fromstring(xml)))
    return host


@dataclass
class Case:
    desired: Callable[[], Stack]
    expected: dict[str, tuple[Action, Reason, list[str]]]  # address -> (action, reason, deciding fields)
    mutate: Callable[[HostState], None] = lambda h: None
    running: bool = True
    destructive: set[str] = field(default_factory=set)
    policies: dict[str, str] = field(default_factory=dict)  # "address field" -> policy


def set_spec(kind: str, key: str, **values: Any) -> Callable[[HostState], None]:
    def mutate(host: HostState) -> None:
        host.objects[(kind, key)].spec.update(values)

    return mutate


def drop(kind: str, key: str) -> Callable[[HostState], None]:
    return lambda host: host.objects.pop((kind, key))


CASES: dict[str, Case] = {
    "no changes": Case(program, {}),
    "everything missing": Case(
        program,
        {
            "h/network/net": (Action.CREATE, Reason.MISSING, []),
            "h/pool/pool": (Action.CREATE, Reason.MISSING, []),
            "h/volume/pool/disk": (Action.CREATE, Reason.MISSING, []),
            "h/vm/vm": (Action.CREATE, Reason.MISSING, []),
        },
        mutate=lambda h: h.objects.clear(),
    ),
    "memory up within max is live": Case(
        lambda: program(vm={"memory": "512MiB"}),
        {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["memory"])},
        policies={"h/vm/vm memory": "live"},
    ),
    "vcpus up within max is live": Case(
        lambda: program(vm={"vcpus": 2}), {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["vcpus"])}
    ),
    "max memory needs a restart": Case(
        lambda: program(vm={"max_memory": "2GiB"}),
        {"h/vm/vm": (Action.RESTART, Reason.NEEDS_RESTART, ["max_memory"])},
        policies={"h/vm/vm max_memory": "restart"},
    ),
    "restart field on a stopped VM is a config update": Case(
        lambda: program(vm={"max_memory": "2GiB", "state": "stopped"}),
        {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["max_memory"])},
        running=False,
    ),
    "power state drift is reconciled": Case(
        program,
        {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["state"])},
        mutate=set_spec("vm", "vm", state="stopped"),
    ),
    "desired stopped: stopping a running VM is destructive": Case(
        lambda: program(vm={"state": "stopped"}),
        {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["state"])},
        destructive={"h/vm/vm"},
    ),
    "arch change replaces (destructive while running)": Case(
        lambda: program(vm={"arch": "x86_64"}),
        {"h/vm/vm": (Action.REPLACE, Reason.FORCES_REPLACEMENT, ["arch"])},
        mutate=set_spec("vm", "vm", arch="i686"),
        destructive={"h/vm/vm"},
    ),
    "out-of-band memory change is drift to undo": Case(
        program,
        {"h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["memory"])},
        mutate=set_spec("vm", "vm", memory=128 * 1024**2),
    ),
    "libvirt defaults are not drift": Case(
        program,
        {},
        mutate=set_spec("vm", "vm", emulator="/usr/bin/qemu-system-x86_64", pci="0x03"),
    ),
    "new disk is hot-plugged": Case(
        lambda: _with_extra_disk(),
        {
            "h/volume/pool/extra": (Action.CREATE, Reason.MISSING, []),
            "h/vm/vm": (Action.UPDATE, Reason.FIELDS_CHANGED, ["disks"]),
        },
        policies={"h/vm/vm disks": "live"},
    ),
    "removing a NIC needs a restart": Case(
        program,
        {"h/vm/vm": (Action.RESTART, Reason.NEEDS_RESTART, ["nics"])},
        mutate=lambda h: (
            h.objects[("vm", "vm")]
            .spec["nics"]
            .append({"network": "net", "bridge": None, "model": "virtio", "mac": "52:54:00:ff:ff:ff"})
        ),
        policies={"h/vm/vm nics": "restart"},
    ),
    "volume grows live": Case(
        lambda: program(size="2GiB"), {"h/volume/pool/disk": (Action.UPDATE, Reason.FIELDS_CHANGED, ["capacity"])}
    ),
    "network reservation change is live": Case(
        program,
        {"h/network/net": (Action.UPDATE, Reason.FIELDS_CHANGED, ["reservations"])},
        mutate=set_spec("network", "net", reservations=[]),
        policies={"h/network/net reservations": "live"},
    ),
    "subnet change replaces the network, destructive for running guests": Case(
        program,
        {
            "h/network/net": (Action.REPLACE, Reason.FORCES_REPLACEMENT, ["cidr"]),
            "h/vm/vm": (Action.UPDATE, Reason.REPLUG, ["net"]),  # its NIC goes back on the new network
        },
        mutate=set_spec("network", "net", cidr="10.6.0.0/24"),
        destructive={"h/network/net"},
        policies={"h/vm/vm unplugged": "live"},
    ),
    "dhcp range change restarts the network": Case(
        lambda: program(net={"dhcp_range": ("10.5.0.50", "10.5.0.60")}),
        {
            "h/network/net": (Action.RESTART, Reason.NEEDS_RESTART, ["dhcp_range"]),
            "h/vm/vm": (Action.UPDATE, Reason.REPLUG, ["net"]),
        },
        destructive={"h/network/net"},
    ),
    "stopped network is started": Case(
        program,
        {
            "h/network/net": (Action.UPDATE, Reason.FIELDS_CHANGED, ["active"]),
            "h/vm/vm": (Action.UPDATE, Reason.REPLUG, ["net"]),  # its port went with the network
        },
        mutate=set_spec("network", "net", active=False),
    ),
    "removed VM is deleted and its reservation dropped": Case(
        lambda: program(no_vm=True),
        {
            "h/vm/vm": (Action.DELETE, Reason.REMOVED_FROM_STACK, []),
            "h/network/net": (Action.UPDATE, Reason.FIELDS_CHANGED, ["reservations"]),
        },
        destructive={"h/vm/vm"},
    ),
}


def _with_extra_disk() -> Stack:
    stack = program()
    from virtplan.model import Disk, collecting

    with collecting(stack):
        extra = Volume("extra", pool=stack.pools[0], size="1GiB")
    stack.vms[0].disks.append(Disk(extra))
    validate(stack)
    return stack


def run_case(case: Case, tmp_path: Path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(), store, running=case.running)
    case.mutate(host)
    desired = case.desired()
    r = Renderer(desired, {"h": QEMU_FACTS}, _identities(host))
    return make_plan(desired, r, {"h": host}, store)


def _identities(host: HostState):
    from virtplan.documents.render import Identity

    return {f"h/vm/{o.key}": Identity(o.uuid, [n["mac"] for n in o.spec["nics"]]) for o in host.of_kind("vm")}


@pytest.mark.parametrize("name", list(CASES))
def test_planner_case(name, tmp_path):
    case = CASES[name]
    plan = run_case(case, tmp_path)
    got = {c.address: c for c in plan.changes}
    assert set(got) == set(case.expected), plan.changes
    for address, (action, reason, fields) in case.expected.items():
        assert (got[address].action, got[address].reason, got[address].reason_fields) == (action, reason, fields)
    assert {c.address for c in plan.destructive()} == case.destructive
    for key, pol in case.policies.items():
        address, fld = key.split(" ")
        assert {fc.field: fc.policy for fc in got[address].changes}[fld] == pol


def test_order_dependencies_first_and_deletions_last(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(), store)
    host.objects.pop(("vm", "vm"))
    host.objects.pop(("volume", "pool/disk"))
    with declare("s") as stack:
        Host("h", "test:///default", domain_type="qemu")
        pool = Pool("pool", path="/p")
        disk = Volume("disk", pool=pool, size="1GiB")
        VM("vm", disks=[disk], memory="64MiB")
    validate(stack)
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store)
    order = [c.address for c in plan.changes]
    assert order == ["h/volume/pool/disk", "h/vm/vm", "h/network/net"]
    assert plan.changes[1].depends_on == ["h/volume/pool/disk"]
    assert plan.changes[2].action == Action.DELETE


def test_foreign_object_with_same_name_is_an_error_not_a_takeover(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(), store)
    net = host.objects[("network", "net")]
    net.owner = None  # made by hand, not by virtplan
    store.forget("test:///default", "h/pool/pool")  # pool not recorded: not ours
    with pytest.raises(PlanError) as info:
        make_plan(program(), Renderer(program(), {"h": QEMU_FACTS}), {"h": host}, store)
    text = str(info.value)
    assert "h/network/net: name: a network named 'net' already exists on host 'h'" in text
    assert "virtplan import" in text
    assert "h/pool/pool" in text


def test_other_stacks_objects_are_never_deleted_or_taken(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    other = StateStore(tmp_path / "other.json", "other")
    host = deployed(program(), other)  # everything belongs to stack "other"
    for o in host.objects.values():
        if o.owner is not None:
            o.owner = type(o.owner)("other", o.owner.address, o.owner.attrs)
    empty = program(no_vm=True)
    empty.resources = [r for r in empty.resources if r.kind == "host"]
    plan = make_plan(empty, Renderer(empty, {"h": QEMU_FACTS}), {"h": host}, store)
    assert plan.empty
    with pytest.raises(PlanError, match="belongs to stack 'other'"):
        make_plan(program(), Renderer(program(), {"h": QEMU_FACTS}), {"h": host}, store)


def test_volume_shrink_is_refused(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(size="4GiB"), store)
    with pytest.raises(PlanError, match="capacity: cannot change .* volumes only grow"):
        make_plan(program(), Renderer(program(), {"h": QEMU_FACTS}), {"h": host}, store)


def test_destroy_plans_only_owned_objects(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(), store)
    stranger = copy.deepcopy(host.objects[("vm", "vm")])
    stranger.key, stranger.owner = "stranger", None
    host.objects[("vm", "stranger")] = stranger
    plan = make_plan(program(), Renderer(program(), {"h": QEMU_FACTS}), {"h": host}, store, destroy=True)
    assert sorted(c.address for c in plan.changes) == sorted(
        ["h/network/net", "h/pool/pool", "h/volume/pool/disk", "h/vm/vm"]
    )
    assert {(c.action, c.reason) for c in plan.changes} == {(Action.DELETE, Reason.DESTROY_REQUESTED)}
    assert plan.changes[0].kind == "vm"


def test_a_renamed_vm_keeping_its_disk_starts_only_after_the_old_one_is_gone(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    host = deployed(program(), store)
    with declare("s") as stack:
        Host("h", "test:///default", domain_type="qemu")
        net = Network("net", cidr="10.5.0.0/24")
        pool = Pool("pool", path="/p")
        disk = Volume("disk", pool=pool, size="1GiB")
        VM("vm-renamed", disks=[disk], nics=[NIC(net, ip="10.5.0.10")], memory="256MiB", max_memory="1GiB")
    validate(stack)
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store)
    got = {c.address: c for c in plan.changes}
    assert got["h/vm/vm"].action == Action.DELETE
    assert got["h/vm/vm-renamed"].action == Action.CREATE
    assert "h/vm/vm" in got["h/vm/vm-renamed"].depends_on  # never two VMs on one disk


def test_destroy_deletes_a_direct_boot_kernel_only_after_its_vm(tmp_path):
    store = StateStore(tmp_path / "state.json", "s")
    with declare("s") as stack:
        Host("h", "test:///default", domain_type="qemu")
        pool = Pool("pool", path="/p")
        kernel = Volume("vmlinuz", pool=pool, size="16MiB", format="raw")
        VM("vm", disks=[Volume("disk", pool=pool, size="1GiB")], kernel=kernel, cmdline="console=ttyS0")
    validate(stack)
    host = deployed(stack, store)
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store, destroy=True)
    got = {c.address: c for c in plan.changes}
    assert "h/vm/vm" in got["h/volume/pool/vmlinuz"].depends_on


class _Node:
    """Just what `ordered` reads of a resource: its kind and its dependencies."""

    def __init__(self, kind: str):
        self.kind, self.deps = kind, []

    def dependencies(self) -> list:
        return self.deps


def _rounds_of_graphlib(nodes: list) -> list:
    """`ordered` as graphlib's rounds give it: ready nodes, done together, round by round."""
    import graphlib

    position = {id(n): i for i, n in enumerate(nodes)}
    by_id = {id(n): n for n in nodes}
    sorter = graphlib.TopologicalSorter({id(n): {id(d) for d in n.deps if id(d) in by_id} for n in nodes})
    sorter.prepare()
    out = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda i: (KIND_ORDER[by_id[i].kind], position[i]))
        out += [by_id[i] for i in ready]
        sorter.done(*ready)
    return out


def test_ordered_gives_graphlibs_rounds_on_random_graphs():
    import random

    rng = random.Random(7)
    for _ in range(300):
        nodes = [_Node(rng.choice(list(KIND_ORDER))) for _ in range(rng.randint(1, 40))]
        rank = {id(n): r for r, n in enumerate(rng.sample(nodes, len(nodes)))}  # a hidden order: no cycle
        for node in nodes:
            node.deps = [
                d for d in rng.sample(nodes, min(len(nodes), rng.randint(0, 4))) if rank[id(d)] < rank[id(node)]
            ]
            if rng.random() < 0.2:
                node.deps.append(_Node("volume"))  # not among the nodes: ignored
        assert ordered(nodes) == _rounds_of_graphlib(nodes)


def test_ordered_refuses_a_cycle_naming_it():
    import graphlib

    a, b, c = _Node("vm"), _Node("volume"), _Node("pool")
    a.deps, b.deps, c.deps = [b], [c], [b]
    with pytest.raises(graphlib.CycleError) as caught:
        ordered([a, b, c])
    assert caught.value.args[1] in ([id(b), id(c), id(b)], [id(c), id(b), id(c)])
