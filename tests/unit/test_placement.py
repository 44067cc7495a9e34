"""Placement (VMs among hosts by declared capacity), objects declared on several hosts,
and VM moves planned as `migrate`: pure cases, from the stack as written to the plan."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from builders import QEMU_FACTS, declare

from virtplan.documents.parse import owner_of, parse
from virtplan.documents.render import Identity, Renderer, volume_path
from virtplan.errors import ValidationError
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import StateStore
from virtplan.model import NIC, VM, Host, Network, Placement, Pool, Stack, Volume, validate
from virtplan.model.placement import place
from virtplan.plan.planner import Action, PlanError, Reason, make_plan
from virtplan.views.text import plan_text


def fleet(vms: list[dict[str, Any]], *, memory: str = "4GiB", vcpus: int = 4, hosts: int = 3, **host: Any) -> Stack:
    """Hosts kvm1..kvmN with a network and a pool on each; `vms` as VM keyword arguments
    (`host` may name hosts: "kvm2", or a list of names for a placement)."""
    with declare("fleet") as stack:
        all_hosts = [
            Host(f"kvm{i}", f"test:///kvm{i}", domain_type="qemu", memory=memory, vcpus=vcpus, **host)
            for i in range(1, hosts + 1)
        ]
        by_name = {h.name: h for h in all_hosts}
        net = Network("fleet-net", host=all_hosts, cidr="10.30.0.0/24")
        pool = Pool("fleet-pool", host=all_hosts, path="/srv/fleet")
        base = Volume("base.qcow2", pool=pool, size="1GiB")
        for spec in vms:
            spec = dict(spec)
            where = spec.pop("host", [h.name for h in all_hosts])
            group = spec.pop("group", None)
            if isinstance(where, str):
                target: Any = by_name[where]
            else:
                target = Placement([by_name[n] for n in where], anti_affinity=group)
            name = spec.pop("name")
            spec.setdefault("memory", "1GiB")
            spec.setdefault("state", "stopped")
            disk = Volume(f"{name}.qcow2", pool=pool, backing=base)
            VM(name, host=target, disks=[disk], nics=[net], **spec)
    return stack


def hosts_of(stack: Stack) -> dict[str, str]:
    return {vm.name: vm.host.name for vm in stack.vms if vm.host is not None}


# -- placing ----------------------------------------------------------------------------------
def test_vms_spread_to_the_least_loaded_host_in_declaration_order() -> None:
    stack = validate(fleet([{"name": f"web{i}"} for i in range(1, 6)]))
    assert hosts_of(stack) == {"web1": "kvm1", "web2": "kvm2", "web3": "kvm3", "web4": "kvm1", "web5": "kvm2"}
    [web2] = [vm for vm in stack.vms if vm.name == "web2"]
    assert web2.placed is not None and web2.placed.startswith("on kvm2: the least loaded of kvm1, kvm2, kvm3")


def test_pinned_vms_count_first_and_anti_affinity_separates_a_group() -> None:
    stack = validate(
        fleet([
            {"name": "db", "host": "kvm1", "memory": "3GiB"},
            {"name": "web1", "group": "web"},
            {"name": "web2", "group": "web"},
            {"name": "web3", "group": "web"},
            {"name": "cache"},
        ])
    )  # fmt: skip
    placed = hosts_of(stack)
    assert placed["db"] == "kvm1"
    assert len({placed["web1"], placed["web2"], placed["web3"]}) == 3
    assert placed["web1"] != "kvm1"  # kvm1 is the fullest once db is there
    [web3] = [vm for vm in stack.vms if vm.name == "web3"]
    assert "anti-affinity group 'web' already has" in (web3.placed or "")


def test_overcommit_ratios_stretch_the_declared_capacity() -> None:
    many = [{"name": f"vm{i}", "vcpus": 2, "memory": "512MiB"} for i in range(6)]
    with pytest.raises(ValidationError, match=r"needs 2 vCPUs, 0 free of 4"):
        validate(fleet(many, hosts=1))
    assert set(hosts_of(validate(fleet(many, hosts=1, cpu_overcommit=3.0))).values()) == {"kvm1"}


def test_an_impossible_placement_says_what_does_not_fit_where() -> None:
    stack = fleet([
        {"name": "a", "group": "g", "host": ["kvm1", "kvm2"]},
        {"name": "b", "group": "g", "host": ["kvm1", "kvm2"]},
        {"name": "c", "group": "g", "host": ["kvm1", "kvm2"]},
        {"name": "huge", "memory": "5GiB"},
    ])  # fmt: skip
    with pytest.raises(ValidationError) as err:
        validate(stack)
    text = str(err.value)
    assert "{kvm1,kvm2}/vm/c: host: fits on none of its hosts: kvm1: anti-affinity group 'g' already has a there; " \
           "kvm2: anti-affinity group 'g' already has b there" in text  # fmt: skip
    assert "{kvm1,kvm2,kvm3}/vm/huge: host: fits on none of its hosts: kvm1: needs 5 GiB of memory, 3 GiB free " \
           "of 4 GiB" in text  # fmt: skip


def test_a_vm_found_on_a_host_stays_there_and_adding_others_moves_nothing() -> None:
    first = fleet([{"name": "web1"}, {"name": "web2"}])
    chosen, errors = place(first, found={"web1": "kvm3", "web2": "kvm1"})
    assert not errors
    assert {n: c.host for n, c in chosen.items()} == {"web1": "kvm3", "web2": "kvm1"}
    assert chosen["web1"].reason == "stays on kvm3, where it is"
    # A VM declared first (it would have taken kvm1 on an empty fleet) moves no one.
    more = fleet([{"name": "new0"}, {"name": "web1"}, {"name": "web2"}, {"name": "new3"}])
    chosen, _ = place(more, found={"web1": "kvm3", "web2": "kvm1"})
    assert {n: c.host for n, c in chosen.items()} == {"new0": "kvm2", "web1": "kvm3", "web2": "kvm1", "new3": "kvm1"}


def test_a_vm_that_no_longer_fits_or_whose_host_left_its_set_is_placed_again() -> None:
    stack = fleet([{"name": "big", "memory": "4GiB"}, {"name": "web", "memory": "1GiB"}])
    chosen, errors = place(stack, found={"web": "kvm1", "big": "kvm1"})
    assert not errors
    assert chosen["big"].host == "kvm1" and chosen["web"].host != "kvm1"
    assert chosen["web"].reason.startswith("moves, as it no longer fits on kvm1: needs 1 GiB of memory, 0 B free")
    narrowed = fleet([{"name": "web", "host": ["kvm2", "kvm3"]}])
    chosen, _ = place(narrowed, found={"web": "kvm1"})
    assert chosen["web"].reason.startswith("moves, as kvm1 is no longer one of its hosts; on kvm2")


def test_objects_on_several_hosts_become_one_per_host_and_a_disk_goes_with_its_vm() -> None:
    stack = validate(fleet([{"name": "web1"}, {"name": "web2", "host": "kvm3"}]))
    addresses = [r.address for r in stack.managed()]
    for host in ("kvm1", "kvm2", "kvm3"):
        assert f"{host}/network/fleet-net" in addresses
        assert f"{host}/volume/fleet-pool/base.qcow2" in addresses
    assert [a for a in addresses if "web" in a] == [
        "kvm1/volume/fleet-pool/web1.qcow2", "kvm1/vm/web1", "kvm3/volume/fleet-pool/web2.qcow2", "kvm3/vm/web2",
    ]  # fmt: skip
    [web1] = [vm for vm in stack.vms if vm.name == "web1"]
    assert web1.disks[0].volume.address == "kvm1/volume/fleet-pool/web1.qcow2"
    assert isinstance(web1.disks[0].volume.backing, Volume)
    assert web1.disks[0].volume.backing.address == "kvm1/volume/fleet-pool/base.qcow2"
    assert web1.nics[0].network is not None and web1.nics[0].network.address == "kvm1/network/fleet-net"
    assert stack.as_written is not stack and stack.as_written.as_written is stack.as_written


def test_layout_errors_name_the_field_and_the_fix() -> None:
    with declare("bad") as stack:
        a = Host("a", "test:///a", memory="1GiB", vcpus=2)
        b = Host("b", "test:///b")  # no capacity
        lonely = Pool("lonely", host=a, path="/srv/x")
        net = Network("n", host=[a], cidr="10.1.0.0/24")
        VM("v", host=[a, b], disks=[Volume("v.qcow2", pool=lonely, size="1GiB")], nics=[NIC(net)])
        VM("w", host=Placement([a, a]))
    with pytest.raises(ValidationError) as err:
        validate(stack)
    text = str(err.value)
    assert "{a,b}/vm/v: host: host 'b' declares no capacity, so nothing can be placed on it: give it memory= and " \
           "vcpus=" in text  # fmt: skip
    assert "{a,b}/vm/v: disks[0]: volume lonely/v.qcow2 is not on b, where this VM may run; declare it on each of " \
           "its hosts with Pool(..., host=[...])" in text  # fmt: skip
    assert "{a,b}/vm/v: nics[0].network: network n is not on b" in text
    assert "{a,a}/vm/w: host: host 'a' is named twice" in text


# -- moves --------------------------------------------------------------------------------------
FACTS = {f"kvm{i}": QEMU_FACTS for i in (1, 2, 3)}


def deploy(stack: Stack, store: StateStore, *, running: bool = False) -> dict[str, HostState]:
    """Observed hosts exactly as if `stack` (concrete) had been applied, records included."""
    renderer = Renderer(stack, FACTS)
    hosts = {h.name: HostState(h.name, h.uri, QEMU_FACTS) for h in stack.hosts}
    for r in stack.managed():
        assert r.host is not None
        host = hosts[r.host.name]
        if isinstance(r, Network):
            xml = renderer.network_xml(r)
            spec = parse("network", xml) | {"active": True, "autostart": r.autostart}
            host.objects[("network", r.name)] = ObservedObject("network", r.name, "n-" + r.address, xml, spec,
                                                               owner_of(ET.fromstring(xml)))  # fmt: skip
        elif isinstance(r, Pool):
            spec = parse("pool", renderer.pool_xml(r)) | {"active": True, "autostart": True}
            host.objects[("pool", r.name)] = ObservedObject("pool", r.name, "p-" + r.address, "", spec)
            store.put(host.uri, r.address, id="p-" + r.address)
        elif isinstance(r, Volume):
            spec = parse("volume", renderer.volume_xml(r))
            xml = f"<volume><allocation>{3 * 1024 * 1024}</allocation></volume>"
            host.objects[("volume", r.key)] = ObservedObject("volume", r.key, volume_path(r), xml, spec)
            store.put(host.uri, r.address, id=volume_path(r))
        elif isinstance(r, VM):
            xml = renderer.domain_xml(r)
            state = "running" if running else "stopped"
            spec = parse("vm", xml) | {"state": state, "autostart": r.autostart}
            host.objects[("vm", r.name)] = ObservedObject("vm", r.name, "u-" + r.name, xml, spec,
                                                          owner_of(ET.fromstring(xml)))  # fmt: skip
    return hosts


def renderer_after_move(stack: Stack, observed: dict[str, HostState]) -> Renderer:
    """As the engine does: a VM found elsewhere keeps its UUID and MACs at its new address."""
    identities = {}
    for vm in stack.vms:
        assert vm.host is not None
        for host in observed.values():
            obj = host.get("vm", vm.name)
            if obj is not None:
                identities[vm.address] = Identity(obj.uuid, [n["mac"] for n in obj.spec.get("nics", [])])
    return Renderer(stack, FACTS, identities)


def pinned(where: str, **vm: Any) -> Stack:
    return validate(fleet([{"name": "mover", "host": where, **vm}]))


def test_changing_a_vms_host_plans_one_migrate_not_a_create_and_a_delete(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1", state="running"), store, running=True)
    moved = pinned("kvm2", state="running")
    plan = make_plan(moved, renderer_after_move(moved, observed), observed, store)
    by_address = {c.address: c for c in plan.changes}
    change = by_address["kvm2/vm/mover"]
    assert (change.action, change.reason, change.reason_fields) == (Action.MIGRATE, Reason.HOST_CHANGED, ["host"])
    assert change.destructive is None
    assert change.move is not None
    assert change.move["live"] is True and change.move["source"] == "kvm1"
    assert change.move["copy_bytes"] == 2 * 3 * 1024 * 1024  # the overlay and its base image
    assert [d["key"] for d in change.move["disks"]] == ["fleet-pool/mover.qcow2"]
    assert change.move["cleanup"] == ["kvm1/volume/fleet-pool/mover.qcow2"]
    # Neither a create of its disk nor deletions on the source: the move does both.
    assert not [c for c in plan.changes if c.action in (Action.CREATE, Action.DELETE)]
    text = plan_text(plan)
    assert "migrate: host changed: moves live from kvm1 to kvm2, copying 6 MiB of disk" in text
    assert "then deleted on kvm1: fleet-pool/mover.qcow2" in text


def test_a_stopped_vm_moves_by_copying_its_files_and_a_pool_left_empty_waits_for_it(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1"), store)
    with declare("fleet") as stack:  # kvm1 loses its pool and network: they go once the VM left
        kvm1 = Host("kvm1", "test:///kvm1", domain_type="qemu")
        kvm2 = Host("kvm2", "test:///kvm2", domain_type="qemu")
        Host("kvm3", "test:///kvm3", domain_type="qemu")
        net = Network("fleet-net", host=[kvm2], cidr="10.30.0.0/24")
        pool = Pool("fleet-pool", host=[kvm2], path="/srv/fleet")
        base = Volume("base.qcow2", pool=pool, size="1GiB")
        VM("mover", host=kvm2, state="stopped", memory="1GiB", disks=[Volume("mover.qcow2", pool=pool, backing=base)],
           nics=[net])  # fmt: skip
        assert kvm1 in stack.hosts
    moved = validate(stack)
    plan = make_plan(moved, renderer_after_move(moved, observed), observed, store)
    by_address = {c.address: c for c in plan.changes}
    change = by_address["kvm2/vm/mover"]
    assert change.move is not None
    assert (change.move["live"], change.move["stop"], change.move["start"]) == (False, False, False)
    assert change.move["copy_bytes"] == 3 * 1024 * 1024  # the overlay's file only: its base is there
    pool_delete = by_address["kvm1/pool/fleet-pool"]
    assert pool_delete.action == Action.DELETE
    assert "kvm2/vm/mover" in pool_delete.depends_on  # the move deletes the disk it had there
    assert "kvm2/vm/mover" in by_address["kvm1/network/fleet-net"].depends_on


def test_a_running_vm_that_cannot_move_live_is_stopped_and_that_is_destructive(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1", state="running"), store, running=True)
    observed["kvm1"].objects[("vm", "mover")].spec["type"] = "kvm"
    moved = pinned("kvm2", state="running")
    [change] = [c for c in make_plan(moved, renderer_after_move(moved, observed), observed, store).changes
                if c.action == Action.MIGRATE]  # fmt: skip
    assert change.move is not None and (change.move["live"], change.move["stop"], change.move["start"]) == (
        False, True, True
    )  # fmt: skip
    assert change.destructive == (
        "the running VM is stopped while its disks are copied, then started on kvm2: it cannot move live "
        "(domain type kvm on kvm1, qemu on kvm2)"
    )


def test_a_move_with_other_changes_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1"), store)
    moved = pinned("kvm2", memory="2GiB")
    with pytest.raises(
        PlanError, match=r"kvm2/vm/mover: host: cannot move from kvm1 to kvm2: max_memory, memory also changed"
    ):
        make_plan(moved, renderer_after_move(moved, observed), observed, store)


def test_a_vm_with_snapshots_is_not_moved(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1"), store)
    store.put("test:///kvm1", "kvm1/snapshot/mover/s1", kind="snapshot", vm="kvm1/vm/mover", id="x")
    moved = pinned("kvm2")
    with pytest.raises(PlanError, match=r"it has snapshots or frozen disk layers"):
        make_plan(moved, renderer_after_move(moved, observed), observed, store)


def test_placement_changed_by_the_stack_shows_its_reason_in_the_plan(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1"), store)
    declared = fleet([{"name": "mover", "host": ["kvm2", "kvm3"]}])
    chosen, _ = place(declared, found={"mover": "kvm1"})
    from virtplan.model.placement import realize

    moved = realize(declared, chosen)
    plan = make_plan(moved, renderer_after_move(moved, observed), observed, store)
    [change] = [c for c in plan.changes if c.action == Action.MIGRATE]
    assert change.placement == "moves, as kvm1 is no longer one of its hosts; on kvm2: the least loaded of kvm2, " \
                               "kvm3 (4 GiB and 4 vCPUs free before it)"  # fmt: skip
    assert "(placement: moves, as kvm1 is no longer one of its hosts" in change.why


def test_hosts_not_read_are_not_planned_nor_vms_that_may_be_there(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.json", "fleet")
    stack = validate(fleet([{"name": "pinned", "host": "kvm1"}, {"name": "anywhere"}]))
    observed = deploy(stack, store)
    del observed["kvm3"]
    for host in observed.values():  # nothing deployed yet on the hosts that answered
        host.objects.clear()
    plan = make_plan(stack, Renderer(stack, FACTS), observed, store, unknown_vms={"anywhere"})
    planned = {c.address for c in plan.changes}
    assert "kvm1/vm/pinned" in planned
    assert not [a for a in planned if a.startswith("kvm3/") or "anywhere" in a]


def test_a_saved_move_stays_current_while_the_guest_writes_to_its_disk(tmp_path: Path) -> None:
    from virtplan.plan.planfile import StalePlan, check_current, plan_document

    store = StateStore(tmp_path / "state.json", "fleet")
    observed = deploy(pinned("kvm1", state="running"), store, running=True)
    moved = pinned("kvm2", state="running")
    plan = make_plan(moved, renderer_after_move(moved, observed), observed, store)
    doc = plan_document(plan, moved, observed, store)
    assert [c["move"]["source"] for c in doc["changes"] if c["action"] == "migrate"] == ["kvm1"]
    disk = observed["kvm1"].objects[("volume", "fleet-pool/mover.qcow2")]
    disk.xml = f"<volume><allocation>{9 * 1024 * 1024}</allocation></volume>"  # the guest wrote meanwhile
    again = make_plan(moved, renderer_after_move(moved, observed), observed, store)
    assert (
        again.changes[-1].move is not None
        and again.changes[-1].move["copy_bytes"] != plan.changes[-1].move["copy_bytes"]
    )
    check_current(doc, again, moved, observed, store)
    observed["kvm1"].objects[("vm", "mover")].spec["state"] = "stopped"  # a real change: stale
    with pytest.raises(StalePlan):
        check_current(doc, make_plan(moved, renderer_after_move(moved, observed), observed, store), moved, observed,
                      store)  # fmt: skip


def test_a_mistake_in_a_nic_or_disk_is_reported_when_the_stack_spans_hosts() -> None:
    """The objects of each host are copies of the declared ones; the copies keep what their
    construction found (they were constructed again, and an unknown field was lost)."""
    with declare() as stack:
        a, b = Host("a", "test:///default"), Host("b", "test:///default")
        net = Network("n", host=[a, b], cidr="10.9.0.0/24")
        VM("v", host=a, memory="64MiB", nics=[NIC(network=net, bogus=1)])  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match=r"a/vm/v: nics\[0\]\.bogus: NIC\(\) has no field 'bogus'"):
        validate(stack)
