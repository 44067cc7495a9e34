"""`clone --host-map`: a VM cloned onto another host gets a full copy of its frozen disk,
streamed through libvirt from one private host to the other."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from clone_support import holds, sha, write

from virtplan.engine import Engine
from virtplan.model import load_stack
from virtplan.testing import destroy
from virtplan.workflows.clone import CloneOptions, clone

SOURCE = """
from virtplan import VM, Host, Network, Pool, Volume
a = Host("a", uri="qemu:///system", domain_type="qemu")
b = Host("b", uri="qemu:///system", domain_type="qemu")
net = Network("m-net", host=a, cidr="10.76.0.0/24")
pool = Pool("m-pool", host=a, path="/var/lib/libvirt/images/m")
VM("m", host=a, memory="64MiB", disks=[Volume("m.qcow2", pool=pool, size="16MiB")], nics=[net], state="stopped")
"""


def test_clone_onto_another_host_copies_the_disk(two_hosts, tmp_path):
    a, b = two_hosts
    source = tmp_path / "m.py"
    source.write_text(SOURCE)
    hosts = {"a": a.uri, "b": b.uri}
    with Engine(load_stack(source, hosts)) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
    disk = "/var/lib/libvirt/images/m/m.qcow2"
    write(a, disk, 0x6B)
    before = sha(a, disk)
    result = clone(source, CloneOptions("away", host_map={"a": "b"}), hosts)
    assert result.mode == "linked, full copies across hosts"
    conn = b.connect()
    try:
        dom = conn.lookupByName("away-m")
        assert not dom.isActive(), "the source VM is stopped, so is its clone"
        path = conn.storagePoolLookupByName("away-m-pool").storageVolLookupByName("away-m.qcow2").path()
        assert ET.fromstring(conn.storageVolLookupByPath(path).XMLDesc(0)).find("backingStore/path") is None
        assert holds(b, path, 0x6B), "the data came along"
        net = ET.fromstring(conn.networkLookupByName("away-m-net").XMLDesc(0))
        assert net.find("ip").get("address") == "10.76.0.1", "nothing on host b has that subnet: kept"
        assert net.find("forward") is None
    finally:
        conn.close()
    with Engine(load_stack(result.stack_file)) as engine:
        assert engine.plan()[0].empty
    destroy(result.stack_file)
    assert sha(a, disk) == before, "the source's disk was never written"
    with Engine(load_stack(source, hosts)) as engine:
        assert engine.plan()[0].empty
