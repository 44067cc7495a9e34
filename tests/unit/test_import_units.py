"""`virtplan import` without a host: from an observed host state to a program whose plan is
a no-op, with what cannot round-trip left out and named."""

from __future__ import annotations

from pathlib import Path

from builders import QEMU_FACTS
from test_planner import deployed

from virtplan.documents.render import Renderer
from virtplan.hosts.observe import ObservedObject
from virtplan.hosts.records import StateStore
from virtplan.model import load_stack
from virtplan.plan.planner import make_plan
from virtplan.workflows.importer.check import settle
from virtplan.workflows.importer.choose import choose
from virtplan.workflows.importer.program import import_program

HOST = """
from virtplan import NIC, VM, Disk, Graphics, Host, Network, Pool, Volume
Host("h", uri="test:///default", domain_type="qemu")
net = Network("lab-net", cidr="10.20.1.0/24", dhcp_range=("10.20.1.100", "10.20.1.199"), domain="lab")
iso = Network("iso", mode="isolated", autostart=False)
pool = Pool("lab-pool", path="/var/lib/libvirt/images/lab")
base = Volume("base.qcow2", pool=pool, size="1GiB")
raw = Volume("data.raw", pool=pool, size="3GiB", format="raw")
kernel = Volume("vmlinuz", pool=pool, size="8MiB", format="raw")
VM("web1", memory="256MiB", max_memory="512MiB", vcpus=2, max_vcpus=4, autostart=True, state="stopped",
   disks=[Disk(Volume("web1.qcow2", pool=pool, backing=base), boot=1), Disk(raw, bus="scsi", target="sdc")],
   nics=[NIC(net, ip="10.20.1.11", mac="52:54:00:00:00:01", model="e1000"), NIC(bridge="br0")],
   graphics=Graphics("spice", listen="0.0.0.0"), description="web <1>", kernel=kernel, cmdline="console=ttyS0",
   console_log=False)
VM("db", memory="1GiB", disks=[Volume("db.qcow2", pool=pool, size="2GiB")], serial=False)
VM("outside", disks=[Volume("outside.qcow2", pool=pool, size="1GiB")])
VM("lonely", nics=[iso])
other = Network("other-net", cidr="10.30.0.0/24")
VM("app", nics=[other])
"""


def test_an_imported_program_plans_as_a_no_op_and_names_what_it_leaves_out(tmp_path: Path):
    source = tmp_path / "host.py"
    source.write_text(HOST)
    store = StateStore(tmp_path / "host.json", "host")
    state = deployed(load_stack(source), store, running=False)
    for obj in state.objects.values():  # made by hand: no marks
        obj.owner = None
    outside = state.objects[("vm", "outside")]
    outside.spec["disks"][0]["volume"] = "/srv/elsewhere/outside.img"  # a disk in no pool
    state.objects[("network", "iso")].spec["active"] = False  # declaring it would start it
    gone = {"mac": "52:54:00:ff:ff:ff", "ip": "10.30.0.5", "name": "gone"}
    state.objects[("network", "other-net")].spec["reservations"] = [gone]  # for a VM no longer there
    state.objects[("volume", "lab-pool/stray.vmdk")] = ObservedObject(
        "volume", "lab-pool/stray.vmdk", "/var/lib/libvirt/images/lab/stray.vmdk", "",
        {"format": "vmdk", "capacity": 1024**3, "backing": None},
    )  # fmt: skip

    skipped: dict[str, str] = {}
    choice = choose(state, [], skipped)
    declarer, excluded = settle(state, choice, "h", "test:///default", "imported")
    assert excluded == {
        ("network", "iso"): "inactive (declaring it would start it)",
        ("vm", "lonely"): "nics[0] network iso: inactive (declaring it would start it)",
        ("vm", "outside"): "disks[0] /srv/elsewhere/outside.img: not in any storage pool",
        ("volume", "lab-pool/stray.vmdk"): "format 'vmdk' (qcow2 and raw are supported)",
        ("network", "other-net"): "does not round-trip (reservations: host has "
        "[{'mac': '52:54:00:ff:ff:ff', 'ip': '10.30.0.5', 'name': 'gone'}], would declare [])",
        ("vm", "app"): "needs network other-net, which is left out",
    }
    assert sorted(key for kind, key in declarer.decls if kind == "vm") == ["db", "web1"]
    text = import_program(declarer, "test:///default", [], {f"{k} {n}": w for (k, n), w in excluded.items()}, "imp")
    assert "- vm outside: disks[0] /srv/elsewhere/outside.img: not in any storage pool" in text
    assert 'host = Host("h", uri="test:///default", domain_type="qemu")' in text
    assert 'VM(\n    "db",\n    host=host,\n    vcpus=1,\n    memory="1GiB",\n' in text

    program = tmp_path / "imported.py"
    program.write_text(text)
    imported = load_stack(program)
    assert sorted(r.address for r in imported.managed()) == sorted(f"h/{kind}/{key}" for kind, key in declarer.decls), (
        "the text declares what was checked"
    )
    for kind, key in declarer.decls:
        obj = state.get(kind, key)
        assert obj is not None
        store.put("test:///default", f"h/{kind}/{key}", kind=kind, claim=obj.uuid)
    plan = make_plan(imported, Renderer(imported, {"h": QEMU_FACTS}), {"h": state}, store)
    assert plan.empty, [(c.address, c.reason) for c in plan.changes]
