"""Cloning, layers, snapshots and import claims without a host: the clone's design and
program, the chain rewriting of domain XML, snapshot validation, and the planner's rules
for layers, snapshots and imported objects."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from builders import QEMU_FACTS, declare
from test_planner import deployed, program

from virtplan.apply.layers import apply_layers
from virtplan.documents.fastspec import desired_snapshot
from virtplan.documents.fragments import layer_disk
from virtplan.documents.parse import parse
from virtplan.documents.render import Renderer
from virtplan.engine import Observation
from virtplan.errors import ValidationError
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import StateStore
from virtplan.model import NIC, VM, Disk, Host, Network, Pool, Snapshot, Volume, load_stack, validate
from virtplan.plan.planner import Action, PlanError, make_plan
from virtplan.workflows.clone import CloneError, CloneOptions, clone_program
from virtplan.workflows.clone import design_clone as design
from virtplan.workflows.clone.subnets import free_subnet, shift

SOURCE = """
from virtplan import NIC, VM, CloudInit, Disk, Host, Network, Pool, Volume
h = Host("h", uri="test:///default", domain_type="qemu")
net = Network("lab-net", cidr="10.20.1.0/24", dhcp_range=("10.20.1.100", "10.20.1.199"), bridge="labbr0")
pool = Pool("lab-pool", path="/var/lib/libvirt/images/lab")
base = Volume("base.qcow2", pool=pool, size="1GiB")
for i in (1, 2):
    VM(f"web{i}", memory="256MiB", disks=[Disk(Volume(f"web{i}.qcow2", pool=pool, backing=base), boot=1)],
       nics=[NIC(net, ip=f"10.20.1.{10 + i}", mac=f"52:54:00:00:00:0{i}"), NIC(bridge="br0")],
       cloud_init=CloudInit(user="ops", password="s3cret", hostname=f"web{i}"), description=f"web {i}")
VM("db", memory="512MiB", disks=[Volume("db.raw", pool=pool, size="2GiB", format="raw")], state="stopped")
"""


@pytest.fixture
def source(tmp_path: Path):
    path = tmp_path / "lab.py"
    path.write_text(SOURCE)
    stack = load_stack(path)
    host = HostState("h", "test:///default", QEMU_FACTS)
    spec = {"cidr": "10.20.1.0/24", "active": True}
    host.objects[("network", "lab-net")] = ObservedObject("network", "lab-net", "u1", "", spec)
    host.objects[("network", "other")] = ObservedObject("network", "other", "u2", "", {"cidr": "10.99.0.0/16"})
    return stack, Observation({"h": host}, Renderer(stack, {"h": QEMU_FACTS}))


def fill(d, path="/var/lib/libvirt/images/lab/frozen"):
    for v in d.vms:
        for i, disk in enumerate(v.disks):
            disk.volume.size, disk.volume.backing = 1024**3, f"{path}-{v.name}-{i}"
            disk.volume.format = "qcow2"


def test_clone_design_renames_isolates_and_maps_addresses(source, tmp_path):
    stack, obs = source
    d = design(stack, obs, CloneOptions("t42", subnet_map={"10.20.1.0/24": "10.98.1.0/24"}))
    assert [v.name for v in d.vms] == ["t42-web1", "t42-web2", "t42-db"]
    lab = next(n for n in d.nets if n.name == "t42-lab-net")
    assert (lab.mode, lab.cidr, lab.dhcp_range, lab.bridge) == (
        "isolated",
        "10.98.1.0/24",
        ("10.98.1.100", "10.98.1.199"),
        None,
    )
    bridge = next(n for n in d.nets if n.name == "t42-br0")
    assert (bridge.mode, bridge.cidr) == ("isolated", None), "a host bridge becomes an isolated network"
    web1 = d.vms[0]
    assert [(n.ip, n.network) for n in web1.nics] == [("10.98.1.11", lab.var), (None, bridge.var)]
    assert [p.path for p in d.pools] == ["/var/lib/libvirt/images/t42-lab"]
    fill(d)
    out = tmp_path / "t42.py"
    out.write_text(clone_program(stack, d, CloneOptions("t42"), {"h": "test:///default"}, out, "linked", "now"))
    clone = load_stack(out)  # valid, and loads the source program for cloud-init
    vm = next(v for v in clone.vms if v.name == "t42-web1")
    assert vm.nics[0].mac is None, "the source's MACs are not copied"
    assert vm.cloud_init.hostname == "t42-web1" and vm.cloud_init.instance_id == "iid-t42-web1"
    assert vm.cloud_init.password.reveal() == "s3cret" and "s3cret" not in out.read_text()
    assert vm.disks[0].volume.backing == "/var/lib/libvirt/images/lab/frozen-t42-web1-0" and vm.disks[0].boot == 1
    assert vm.description == "web 1"
    db = next(v for v in clone.vms if v.name == "t42-db")
    assert db.state == "stopped" and db.disks[0].volume.name == "t42-db.qcow2", "a raw disk's overlay is qcow2"
    assert {n.name for n in clone.networks} == {"t42-lab-net", "t42-br0"}


def test_clone_picks_a_free_subnet_when_the_old_one_would_clash(source):
    stack, obs = source
    d = design(stack, obs, CloneOptions("t1"))
    cidr = ipaddress.IPv4Network(next(n for n in d.nets if n.name == "t1-lab-net").cidr)
    assert cidr.prefixlen == 24 and not cidr.overlaps(ipaddress.IPv4Network("10.20.1.0/24"))
    assert cidr.subnet_of(ipaddress.IPv4Network("10.128.0.0/9"))
    again = design(stack, obs, CloneOptions("t1"))
    assert next(n for n in again.nets if n.name == "t1-lab-net").cidr == str(cidr), "deterministic"
    taken = [ipaddress.IPv4Network("10.128.0.0/10")]
    assert not free_subnet(24, taken, "x").overlaps(taken[0])


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (CloneOptions("lab"), "source stack's own name"),
        (CloneOptions("bad/name"), "use letters"),
        (CloneOptions("t", subnet_map={"10.1.0.0/24": "10.2.0.0/24"}), "no network of stack 'lab' has that subnet"),
        (CloneOptions("t", subnet_map={"10.20.1.0/24": "10.2.0.0/25"}), "smaller"),
        (CloneOptions("t", subnet_map={"10.20.1.0/24": "10.99.3.0/24"}), "overlaps 10.99.0.0/16"),
        (CloneOptions("t", host_map={"h": "nowhere"}), "both must be hosts"),
    ],
)
def test_clone_options_are_checked_before_anything_happens(source, opts, message):
    stack, obs = source
    with pytest.raises(CloneError, match=message):
        design(stack, obs, opts)


def test_fixed_ips_keep_their_place_in_the_subnet():
    old, new = ipaddress.IPv4Network("10.20.1.0/24"), ipaddress.IPv4Network("10.99.0.0/16")
    assert shift("10.20.1.11", old, new, "ip") == "10.99.0.11"
    with pytest.raises(CloneError, match="no place"):
        shift("10.20.1.200", old, ipaddress.IPv4Network("10.5.0.0/25"), "ip")


# -- layers -----------------------------------------------------------------------------------
DISK = "<domain><devices><disk type='volume' device='disk'><driver name='qemu' type='raw'/>" \
       "<source pool='p' volume='d.raw'/><target dev='vda' bus='virtio'/></disk></devices></domain>"  # fmt: skip


def test_a_layered_disk_is_still_its_declared_volume(tmp_path):
    root = ET.fromstring(DISK)
    layer_disk(root.find("devices/disk"), ["/p/d.raw.s2", "/p/d.raw.s1"], "p/d.raw", "raw")
    xml = ET.tostring(root, encoding="unicode")
    disk = ET.fromstring(xml).find("devices/disk")
    assert disk.get("type") == "file" and disk.find("source").get("file") == "/p/d.raw.s2"
    assert disk.find("driver").get("type") == "qcow2"
    chain = disk.find("backingStore")
    assert chain.find("source").get("file") == "/p/d.raw.s1"
    assert chain.find("backingStore").get("type") == "volume"
    assert chain.find("backingStore/format").get("type") == "raw"
    assert parse("vm", xml)["disks"] == [{"volume": "p/d.raw", "device": "disk", "bus": "virtio", "boot": None}]
    store = StateStore(tmp_path / "s.json", "s")
    assert apply_layers(DISK, store, "u", "h") == DISK, "no layers: untouched"
    store.put("u", "h/volume/p/d.raw", layers=["/p/d.raw.s1"])
    rewritten = ET.fromstring(apply_layers(DISK, store, "u", "h")).find("devices/disk")
    assert rewritten.find("source").get("file") == "/p/d.raw.s1"


# -- snapshots in the model -------------------------------------------------------------------
def snap_stack(**kw):
    with declare("s") as stack:
        Host("h", "test:///default")
        pool = Pool("p", path="/p")
        vm = VM("vm", disks=[Volume("a", pool=pool, size="1GiB"), Volume("b", pool=pool, size="1GiB", format="raw")],
                **kw)  # fmt: skip
        first = Snapshot("one", vm=vm)
        second = Snapshot("two", vm=vm, memory=True)
    return stack, first, second


def test_snapshots_validate_and_are_taken_in_declared_order():
    with pytest.raises(ValidationError) as err:
        validate(snap_stack(state="stopped")[0])
    text = str(err.value)
    assert "h/snapshot/vm/two: memory: a memory snapshot needs a running VM" in text
    assert "disks[1] is raw; a memory snapshot needs qcow2 disks" in text
    _, first, second = snap_stack()
    assert second.dependencies() == [first.vm, first]
    assert first.key == "vm/one" and desired_snapshot(first) == {"memory": False}


def snapshot_host(stack, store, memory=False):
    host = deployed(stack, store)
    key = "vm/pre"
    host.objects[("snapshot", key)] = ObservedObject("snapshot", key, "layers:1", "", {"memory": memory})
    store.put("test:///default", f"h/snapshot/{key}", kind="snapshot", id="layers:1")
    return host


def with_snapshot(memory=False):
    with declare("s") as stack:
        Host("h", "test:///default", domain_type="qemu")
        pool = Pool("pool", path="/p")
        vm = VM("vm", disks=[Volume("disk", pool=pool, size="1GiB")])
        Snapshot("pre", vm=vm, memory=memory)
    validate(stack)
    return stack


def test_planner_creates_keeps_refuses_and_deletes_snapshots(tmp_path):
    store = StateStore(tmp_path / "s.json", "s")
    stack = with_snapshot()
    host = deployed(stack, store)
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store)
    assert [(c.address, c.action, c.depends_on) for c in plan.changes] == [("h/snapshot/vm/pre", Action.CREATE, [])]
    host = snapshot_host(stack, store)
    assert make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store).empty
    with pytest.raises(PlanError, match="a snapshot keeps the moment it was taken"):
        changed = with_snapshot(memory=True)
        make_plan(changed, Renderer(changed, {"h": QEMU_FACTS}), {"h": host}, store)
    without = program()
    plan = make_plan(without, Renderer(without, {"h": QEMU_FACTS}), {"h": snapshot_host(stack, store)}, store)
    delete = [c for c in plan.changes if c.kind == "snapshot"]
    assert [(c.action, bool(c.destructive)) for c in delete] == [(Action.DELETE, True)]
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": snapshot_host(stack, store)}, store, destroy=True)
    vm_delete = next(c for c in plan.changes if c.address == "h/vm/vm")
    assert "h/snapshot/vm/pre" in vm_delete.depends_on, "a VM goes after its snapshots"


def test_layers_go_with_their_volume_only(tmp_path):
    store = StateStore(tmp_path / "s.json", "s")
    stack = program()
    host = deployed(stack, store)
    layer = "/p/disk.snap"
    host.objects[("volume", "pool/disk.snap")] = ObservedObject("volume", "pool/disk.snap", layer, "",
                                                                {"format": "qcow2", "backing": "/p/disk"})  # fmt: skip
    store.put("test:///default", "h/volume/pool/disk.snap", kind="volume", id=layer, layer_of="h/volume/pool/disk")
    assert make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store).empty
    plan = make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store, destroy=True)
    by_addr = {c.address: c for c in plan.changes}
    assert by_addr["h/volume/pool/disk.snap"].action == Action.DELETE
    assert "h/volume/pool/disk.snap" in by_addr["h/volume/pool/disk"].depends_on


def test_imported_objects_plan_as_no_ops_until_they_differ(tmp_path):
    store = StateStore(tmp_path / "s.json", "s")
    stack = program()
    host = deployed(stack, store)
    for obj in host.objects.values():  # foreign: no marks, no records
        obj.owner = None
    store.path.unlink()
    with pytest.raises(PlanError, match="virtplan import"):
        make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store)
    for obj in host.objects.values():
        store.put("test:///default", f"h/{obj.kind}/{obj.key}", kind=obj.kind, claim=obj.uuid)
    assert make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store).empty
    assert make_plan(stack, Renderer(stack, {"h": QEMU_FACTS}), {"h": host}, store, destroy=True).empty, \
        "never deleted: not owned"  # fmt: skip
    changed = program(vm={"memory": "512MiB"})
    with pytest.raises(PlanError, match="h/vm/vm: memory: was imported but is not adopted"):
        make_plan(changed, Renderer(changed, {"h": QEMU_FACTS}), {"h": host}, store)


def test_volume_backing_on_a_host_image_and_copies_validate():
    with declare("s") as stack:
        Host("h", "test:///default")
        pool = Pool("p", path="/p")
        Volume("ok", pool=pool, size="1GiB", backing="/src/frozen", backing_format="raw")
        Volume("copy", pool=pool, size="1GiB", copy_of="/src/frozen")
        Volume("nosize", pool=pool, backing="/src/frozen")
        Volume("relative", pool=pool, size="1GiB", copy_of="src/x", backing="/y")
    with pytest.raises(ValidationError) as err:
        validate(stack)
    text = str(err.value)
    assert "h/volume/p/nosize: size: is required with backing= an image path" in text
    assert "h/volume/p/relative: copy_of: 'src/x' must be an absolute path" in text
    assert "h/volume/p/relative: copy_of: a volume is a copy" in text
    assert "h/volume/p/ok" not in text and "h/volume/p/copy:" not in text
    r = Renderer(stack, {"h": QEMU_FACTS})
    assert parse("volume", r.volume_xml(stack.volumes[0]))["backing"] == "/src/frozen"
    assert '<format type="raw"/>' in r.volume_xml(stack.volumes[0])
    _ = (NIC, Network, Disk)
