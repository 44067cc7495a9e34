"""Cloning a running 3-VM environment (a network, a base image, overlays) on a real host.

The clone's VMs run with new names, UUIDs and MACs on their own isolated network; the
source VMs keep running and their disk files stay byte-identical; what the clone writes
never reaches the source; the source's images are protected while the clone uses them;
destroying the clone leaves the source and its base image intact. Also: full copies and
clones from a snapshot, and the `virtplan.testing` context manager.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest
from clone_support import Cli, backing_of, base_image, holds, in_host, sha, write

from virtplan import testing
from virtplan.apply.protection import ProtectedVolumeError, refuse_if_backing
from virtplan.engine import Engine
from virtplan.model import load_stack
from virtplan.plan.planner import PlanError
from virtplan.testing import cloned_environment
from virtplan.workflows import snapshots

virtplan_clone = testing.virtplan_clone  # the pytest fixture virtplan.testing provides

SOURCE = """
from virtplan import NIC, VM, CloudInit, Disk, Host, Network, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
net = Network("src-net", cidr="10.71.0.0/24", domain="src.test")
pool = Pool("src-pool", path="/var/lib/libvirt/images/src")
base = Volume("base.qcow2", pool=pool, source={image!r})
for i in (1, 2, 3):
    VM(
        f"s{{i}}", memory="64MiB", disks=[Disk(Volume(f"s{{i}}.qcow2", pool=pool, backing=base), boot=1)],
        nics=[NIC(net, ip=f"10.71.0.{{10 + i}}")], shutdown_timeout=0,
        cloud_init=CloudInit(user="ops", password="pw-s{{i}}".format(i=i), hostname=f"s{{i}}"),
    )
"""
VMS = ("s1", "s2", "s3")
POOL = "/var/lib/libvirt/images/src"
FILES = [f"{POOL}/base.qcow2", *(f"{POOL}/{vm}.qcow2" for vm in VMS)]


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clone")
    source = tmp / "src.py"
    source.write_text(SOURCE.format(image=str(base_image(tmp))))
    hosts = {"h": private_host.uri}
    with Engine(load_stack(source, hosts)) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
    conn = private_host.connect()
    state = SimpleNamespace(
        host=private_host, conn=conn, source=source, hosts=hosts, tmp=tmp, cli=Cli(),
        ids={vm: conn.lookupByName(vm).ID() for vm in VMS},
        uuids={vm: conn.lookupByName(vm).UUIDString() for vm in VMS},
        macs={vm: set(_macs(conn, vm)) for vm in VMS},
        sums={f: sha(private_host, f) for f in FILES},
    )  # fmt: skip
    yield state
    conn.close()


def _macs(conn, vm: str) -> list[str]:
    root = ET.fromstring(conn.lookupByName(vm).XMLDesc(0))
    return [m.get("address") for m in root.iterfind("devices/interface/mac")]


def plan_of(path, hosts=None):
    with Engine(load_stack(path, hosts)) as engine:
        return engine.plan()[0]


def source_intact(env) -> None:
    conn = env.conn
    for vm in VMS:
        dom = conn.lookupByName(vm)
        assert dom.isActive() and dom.ID() == env.ids[vm], f"{vm} must keep running, never restarted"
    assert {f: sha(env.host, f) for f in FILES} == env.sums, "the source's disk files must be byte-identical"
    assert plan_of(env.source, env.hosts).empty


def test_linked_clone_of_a_running_environment(env):
    out = env.cli("clone", str(env.source), "--name", "c1", "--subnet-map", "10.71.0.0/24=10.72.0.0/24",
                  "--host", f"h={env.host.uri}")  # fmt: skip
    assert "Clone c1 (linked)" in out and "s1 -> c1-s1" in out
    clone_file = env.tmp / "c1.py"
    text = clone_file.read_text()
    assert 'source_stack("src.py")' in text and "pw-s1" not in text, "secrets stay in the source program"
    conn = env.conn
    for vm in VMS:
        dom = conn.lookupByName(f"c1-{vm}")
        assert dom.isActive()
        assert dom.UUIDString() != env.uuids[vm]
        assert not set(_macs(conn, f"c1-{vm}")) & env.macs[vm], "new MACs"
        root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert [s.get("network") for s in root.iterfind("devices/interface/source")] == ["c1-src-net"]
        disk = f"/var/lib/libvirt/images/c1-src/c1-{vm}.qcow2"
        assert backing_of(conn, disk) == f"{POOL}/{vm}.qcow2", "a linked clone on the frozen source disk"
    net = ET.fromstring(conn.networkLookupByName("c1-src-net").XMLDesc(0))
    assert net.find("forward") is None, "isolated"
    assert net.find("ip").get("address") == "10.72.0.1"
    assert sorted(h.get("ip") for h in net.iterfind("ip/dhcp/host")) == ["10.72.0.11", "10.72.0.12", "10.72.0.13"]
    source_intact(env)
    assert plan_of(clone_file).empty
    assert "No changes" in env.cli("plan", str(clone_file))


def test_writes_inside_a_clone_disk_do_not_reach_the_source(env):
    conn = env.conn
    dom = conn.lookupByName("c1-s2")
    dom.destroy()  # a running guest holds its image's write lock
    disk = "/var/lib/libvirt/images/c1-src/c1-s2.qcow2"
    assert holds(env.host, disk, 0x11), "the clone sees the source's data (the base image's pattern)"
    write(env.host, disk, 0x5A)
    assert holds(env.host, disk, 0x5A)
    source_top = f"{POOL}/s2.qcow2.clone-c1"  # the layer the running source writes to now
    assert holds(env.host, source_top, 0x11) and not holds(env.host, source_top, 0x5A)
    dom.create()
    source_intact(env)


def test_images_others_build_on_are_protected(env):
    with Engine(load_stack(env.source, env.hosts)) as engine, pytest.raises(PlanError) as err:
        engine.plan(destroy=True)
    text = str(err.value)
    assert "h/volume/src-pool/s1.qcow2: backing: cannot be deleted" in text and "c1-s1.qcow2" in text
    applier = SimpleNamespace(conn=env.conn)  # the check apply makes right before deleting
    with pytest.raises(ProtectedVolumeError, match="c1-s3.qcow2"):
        refuse_if_backing(applier, "h/volume/src-pool/s3.qcow2", f"{POOL}/s3.qcow2")
    source_intact(env)


def test_a_frozen_source_stays_manageable(env):
    env.source.write_text(
        env.source.read_text().replace("shutdown_timeout=0,", 'shutdown_timeout=0, description="v2",')
    )
    with Engine(load_stack(env.source, env.hosts)) as engine:
        plan, observation = engine.plan()
        assert {(c.address, c.action.value) for c in plan.changes} == {(f"h/vm/{vm}", "update") for vm in VMS}
        engine.apply(plan, observation)
    root = ET.fromstring(env.conn.lookupByName("s1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert root.findtext("description") == "v2"
    assert root.find("devices/disk/source").get("file") == f"{POOL}/s1.qcow2.clone-c1", "still on its layer"
    source_intact(env)


def test_full_clone_from_a_snapshot(env):
    with Engine(load_stack(env.source, env.hosts)) as engine:
        assert snapshots.create_all(engine, "pre") == ["h/s1", "h/s2", "h/s3"]
    out = env.cli("clone", str(env.source), "--name", "c3", "--full", "--from-snapshot", "pre", "--stopped",
                  "--host", f"h={env.host.uri}")  # fmt: skip
    assert "Clone c3 (full)" in out
    for vm in VMS:
        disk = f"/var/lib/libvirt/images/c3-src/c3-{vm}.qcow2"
        assert backing_of(env.conn, disk) is None, "a full copy stands alone"
        assert holds(env.host, disk, 0x11), "with the data of the whole chain"
        assert not env.conn.lookupByName(f"c3-{vm}").isActive()
    assert "Plan: 0 to add" in env.cli("destroy", str(env.tmp / "c3.py"), "--yes", "--allow-destroy")
    assert not (os.path.exists(f"/proc/{env.host.pid}/root/var/lib/libvirt/images/c3-src"))
    source_intact(env)


def test_testing_context_manager_clones_and_always_destroys(env):
    with (
        pytest.raises(RuntimeError, match="test failed"),
        cloned_environment(env.source, name="c2", hosts=env.hosts, from_snapshot="pre",
                           subnet_map={"10.71.0.0/24": "10.73.0.0/24"}) as clone,
    ):  # fmt: skip
        assert clone.vm("s1").name == "c2-s1" and clone.vm("s1").state == "running"
        assert clone.ip("s2") == "10.73.0.12"
        assert clone.vm("s3").uuid != env.uuids["s3"]
        record = env.conn.lookupByName("c2-s1")
        assert record.isActive()
        disk = "/var/lib/libvirt/images/c2-src/c2-s1.qcow2"
        assert backing_of(env.conn, disk) == f"{POOL}/s1.qcow2.clone-c1", "the snapshot's frozen file"
        raise RuntimeError("test failed")
    names = {d.name() for d in env.conn.listAllDomains()} | {n.name() for n in env.conn.listAllNetworks()}
    assert not {n for n in names if n.startswith("c2-")}, "destroyed even though the test failed"
    assert not (env.tmp / "c2.py").exists()
    source_intact(env)


def test_pytest_fixture_makes_clones_for_one_test(env, virtplan_clone):
    clone = virtplan_clone(env.source, name="c4", hosts=env.hosts, from_snapshot="pre", state="stopped")
    assert clone.vm("s1").name == "c4-s1" and clone.vm("s1").state == "stopped"
    assert clone.ip("s1") == clone.vm("s1").ips[0] and clone.ip("s1").startswith("10.")
    assert (env.tmp / "c4.py").exists()


def test_destroying_the_clone_leaves_the_source_and_its_base_intact(env):
    assert not (env.tmp / "c4.py").exists(), "the fixture destroyed its clone after the test"
    env.cli("destroy", str(env.tmp / "c1.py"), "--yes", "--allow-destroy")
    names = {d.name() for d in env.conn.listAllDomains()} | {n.name() for n in env.conn.listAllNetworks()}
    assert not {n for n in names if n.startswith("c1-")}
    source_intact(env)
    in_host(env.host, "test", "-f", f"{POOL}/base.qcow2")
    # no clone left: the source can go, with the layers its freezes and snapshot made
    with Engine(load_stack(env.source, env.hosts)) as engine:
        plan, observation = engine.plan(destroy=True)
        engine.apply(plan, observation)
    assert not os.path.exists(f"/proc/{env.host.pid}/root{POOL}")
