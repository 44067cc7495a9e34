"""stacks/lab.py on two real private hosts at once: overlays, uploads, cloud-init seeds,
reservations, a cloud-init change that restarts one VM, and destroy across both hosts."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from virtplan.documents.seed import read_seed_iso
from virtplan.engine import Engine
from virtplan.model import load_stack
from virtplan.plan.planner import Action
from virtplan_lab.testbed import user_pools

LAB = Path(__file__).resolve().parents[2] / "stacks" / "lab.py"


@pytest.fixture(scope="module")
def lab(two_hosts, tmp_path_factory, monkeypatch_module):
    tmp = tmp_path_factory.mktemp("lab")
    image = tmp / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    monkeypatch_module.setenv("VIRTPLAN_LAB_IMAGE", str(image))
    a, b = two_hosts
    uris = {"kvm1": a.uri, "kvm2": b.uri}

    def engine(path: Path = LAB) -> Engine:
        stack = load_stack(path, uris)
        return Engine(stack)

    yield engine, a.connect(), b.connect(), image, tmp


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def download(conn, pool: str, name: str) -> bytes:
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    chunks = []
    stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
    stream.finish()
    return b"".join(chunks)


def test_apply_lab_on_two_hosts(lab):
    engine, kvm1, kvm2, image, _ = lab
    with engine() as e:
        plan, obs = e.plan()
        counts = plan.counts()
        assert counts[Action.CREATE] == 2 * 3 + 3 * 2 + 3  # per host net+pool+base; web overlays+VMs; db root+data+VM
        assert {c.host for c in plan.changes} == {"kvm1", "kvm2"}
        e.apply(plan, obs)

    assert sorted(d.name() for d in kvm1.listAllDomains()) == ["web1", "web2", "web3"]
    assert [d.name() for d in kvm2.listAllDomains()] == ["db1"]
    assert all(d.isActive() for d in kvm1.listAllDomains() + kvm2.listAllDomains())

    # The uploaded base is byte-identical to the local image; overlays are backed by it.
    assert download(kvm1, "lab-pool", "base.qcow2") == image.read_bytes()
    web1 = ET.fromstring(kvm1.storagePoolLookupByName("lab-pool").storageVolLookupByName("web1.qcow2").XMLDesc())
    assert web1.findtext("backingStore/path") == "/var/lib/libvirt/images/lab/base.qcow2"

    # Fixed IPs are reservations on each host's own network (same name, different subnets).
    net1 = kvm1.networkLookupByName("lab-net").XMLDesc()
    assert "ip='10.20.1.11'" in net1 and "ip='10.20.1.13'" in net1 and "name='web2'" in net1
    assert "ip='10.20.2.10'" in kvm2.networkLookupByName("lab-net").XMLDesc()

    # Each web VM has its NoCloud seed as a volume in its pool, with its own hostname.
    seed = read_seed_iso(download(kvm1, "lab-pool", "web2-cidata.iso"))
    assert 'local-hostname: "web2"' in seed["meta-data"] and "nginx" in seed["user-data"]
    db = kvm2.lookupByName("db1").XMLDesc()
    assert "db1-data.raw" in db and "db1-cidata.iso" in db

    with engine() as e:
        assert e.plan()[0].empty


def test_cloud_init_change_restarts_only_that_vm(lab):
    engine, kvm1, _, _, tmp = lab
    # the same stack, edited: moved within its project (a pyproject.toml naming it), same identity
    (tmp / "pyproject.toml").write_text('[tool.virtplan]\nproject = "virtplan"\n')
    edited = tmp / "lab.py"
    edited.write_text(
        LAB.read_text().replace('packages=["nginx"]', 'packages=["nginx"] if name != "web2" else ["nginx", "curl"]')
    )
    before = {d.name(): d.ID() for d in kvm1.listAllDomains()}
    with engine(edited) as e:
        plan, obs = e.plan()
        assert [(c.address, c.action) for c in plan.changes] == [("kvm1/vm/web2", Action.RESTART)]
        assert [fc.field for fc in plan.changes[0].changes] == ["cloud_init"]
        e.apply(plan, obs)
    after = {d.name(): d.ID() for d in kvm1.listAllDomains()}
    assert after["web2"] != before["web2"] and after["web1"] == before["web1"]
    assert "curl" in read_seed_iso(download(kvm1, "lab-pool", "web2-cidata.iso"))["user-data"]
    with engine(edited) as e:
        assert e.plan()[0].empty


def test_destroy_lab_removes_everything_on_both_hosts(lab):
    engine, kvm1, kvm2, _, _ = lab
    with engine() as e:
        plan, obs = e.plan(destroy=True)
        assert all(c.action == Action.DELETE for c in plan.changes)
        e.apply(plan, obs)
    for conn in (kvm1, kvm2):
        assert conn.listAllDomains() == []
        assert conn.listAllNetworks() == []
        assert user_pools(conn) == []
    with pytest.raises(libvirt.libvirtError):
        kvm1.storagePoolLookupByName("lab-pool")
