"""Renames in the stack (`renamed_from=`, issue 11, item 11), against a real private host
through the CLI: planned as renames, never delete + create, keeping UUIDs, MACs, disks
and data; what each costs is in the plan."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import libvirt
import pytest
from review_support import Cli

HEADER = (
    "from virtplan import NIC, VM, Host, Network, Pool, Volume\n"
    'Host("h", uri="qemu:///system", domain_type="qemu")\n'
    'pool = Pool("rn-pool", path="/var/lib/libvirt/images/rn")\n'
)


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("renames")
    cli = Cli(private_host.uri, home / "user", cwd=home)
    conn = private_host.connect()
    yield cli, home, conn, private_host
    conn.close()


def write(path: Path, body: str) -> Path:
    path.write_text(HEADER + body)
    return path


def mac_of(conn, name: str) -> str:
    xml = conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return xml.split("<mac address='")[1].split("'")[0]


def test_a_stopped_vm_is_renamed_with_domrename_keeping_uuid_mac_and_disk(env):
    cli, home, conn, _ = env
    stack = home / "rn-stopped.py"
    disk = 'd = Volume("rn-stopped.qcow2", pool=pool, size="16MiB")\nnet = Network("rn-net1", cidr="10.103.0.0/24")\n'
    write(stack, disk + 'VM("rn-old", memory="64MiB", disks=[d], nics=[net], state="stopped")\n')
    cli("apply", str(stack), "--yes")
    uuid, mac = conn.lookupByName("rn-old").UUIDString(), mac_of(conn, "rn-old")
    write(stack, disk + 'VM("rn-new", memory="64MiB", disks=[d], nics=[net], state="stopped", renamed_from="rn-old")\n')
    plan = cli("plan", str(stack), "--commands")
    assert "~ vm rn-new  update: renamed from rn-old" in plan and "name: 'rn-old' -> 'rn-new'  (rename)" in plan, plan
    assert "+ vm" not in plan and "- vm" not in plan, plan
    assert "virsh domrename rn-old rn-new" in plan, plan
    cli("apply", str(stack), "--yes")
    dom = conn.lookupByName("rn-new")
    assert (dom.UUIDString(), mac_of(conn, "rn-new")) == (uuid, mac)
    assert "rn-stopped.qcow2" in dom.XMLDesc(0)
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("rn-old")
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_running_vm_rename_says_what_it_costs_and_keeps_its_identity(env):
    cli, home, conn, _ = env
    stack = home / "rn-running.py"
    write(stack, 'VM("rn-run", memory="64MiB", shutdown_timeout=0)\n')
    cli("apply", str(stack), "--yes")
    uuid = conn.lookupByName("rn-run").UUIDString()
    write(stack, 'VM("rn-ran", memory="64MiB", shutdown_timeout=0, renamed_from="rn-run")\n')
    plan = cli("plan", str(stack))
    assert (
        "~ vm rn-ran  restart: renamed from rn-run; libvirt renames only stopped domains: the running VM is shut "
        "down and started again"
    ) in plan, plan
    cli("apply", str(stack), "--yes")
    dom = conn.lookupByName("rn-ran")
    assert dom.isActive() and dom.UUIDString() == uuid
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    assert "No changes outside virtplan" in cli("drift", str(stack))
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_network_rename_keeps_its_uuid_and_replugs_its_running_guest_live(env):
    cli, home, conn, host = env
    stack = home / "rn-net.py"
    vm = 'VM("rn-guest", memory="64MiB", nics=[net], shutdown_timeout=0)\n'
    write(stack, 'net = Network("rn-net-a", cidr="10.104.0.0/24")\n' + vm)
    cli("apply", str(stack), "--yes")
    net_uuid, domid = conn.networkLookupByName("rn-net-a").UUIDString(), conn.lookupByName("rn-guest").ID()
    write(stack, 'net = Network("rn-net-b", cidr="10.104.0.0/24", renamed_from="rn-net-a")\n' + vm)
    plan = cli("plan", str(stack))
    assert "~ network rn-net-b  restart: renamed from rn-net-a; libvirt cannot rename a network" in plan, plan
    assert "~ vm rn-guest  update: nics, unplugged changed" in plan and "(restart)" not in plan, plan
    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert conn.networkLookupByName("rn-net-b").UUIDString() == net_uuid
    dom = conn.lookupByName("rn-guest")
    assert dom.ID() == domid, "the guest was restarted"
    assert "network='rn-net-b'" in dom.XMLDesc(0) and "network='rn-net-b'" in dom.XMLDesc(
        libvirt.VIR_DOMAIN_XML_INACTIVE
    )
    taps = subprocess.run(["nsenter", "-t", str(host.pid), "-n", "ip", "-o", "link", "show", "master", "vp-rn-net-b"],
                          capture_output=True, text=True).stdout  # fmt: skip
    assert "vnet" in taps, "the guest's tap is not on the renamed network's bridge"
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    assert "No changes outside virtplan" in cli("drift", str(stack))
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_volume_rename_copies_its_data_and_switches_its_stopped_vm_to_the_copy(env):
    cli, home, conn, _ = env
    stack = home / "rn-vol.py"
    vm = 'VM("rn-user", memory="64MiB", disks=[data], state="stopped")\n'
    write(stack, 'data = Volume("rn-data.raw", pool=pool, size="1MiB", format="raw")\n' + vm)
    cli("apply", str(stack), "--yes")
    vol = conn.storagePoolLookupByName("rn-pool").storageVolLookupByName("rn-data.raw")
    payload = os.urandom(1024 * 1024)
    stream = conn.newStream(0)
    vol.upload(stream, 0, len(payload), 0)
    stream.send(payload)
    stream.finish()
    write(
        stack, 'data = Volume("rn-data2.raw", pool=pool, size="1MiB", format="raw", renamed_from="rn-data.raw")\n' + vm
    )
    plan = cli("plan", str(stack))
    assert (
        "~ volume rn-pool/rn-data2.raw  update: renamed from rn-pool/rn-data.raw; libvirt cannot rename a volume"
        in plan
    )
    assert "- volume" not in plan, plan
    cli("apply", str(stack), "--yes")
    copy = conn.storagePoolLookupByName("rn-pool").storageVolLookupByName("rn-data2.raw")
    stream, chunks = conn.newStream(0), []
    copy.download(stream, 0, len(payload), 0)
    stream.recvAll(lambda _s, data, acc: acc.append(data), chunks)
    stream.finish()
    assert hashlib.sha256(b"".join(chunks)).hexdigest() == hashlib.sha256(payload).hexdigest()
    with pytest.raises(libvirt.libvirtError):
        conn.storagePoolLookupByName("rn-pool").storageVolLookupByName("rn-data.raw")
    assert "rn-data2.raw" in conn.lookupByName("rn-user").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_volume_under_a_running_vm_is_not_renamed_and_the_plan_says_why(env):
    cli, home, _, _ = env
    stack = home / "rn-busy.py"
    vm = 'VM("rn-busy", memory="64MiB", disks=[d], shutdown_timeout=0)\n'
    write(stack, 'd = Volume("rn-busy.qcow2", pool=pool, size="16MiB")\n' + vm)
    cli("apply", str(stack), "--yes")
    write(stack, 'd = Volume("rn-busy2.qcow2", pool=pool, size="16MiB", renamed_from="rn-busy.qcow2")\n' + vm)
    out = cli("plan", str(stack), rc=1)
    assert (
        "libvirt cannot rename a volume, so virtplan copies it, which it cannot do under a running VM (rn-busy)" in out
    )
    write(stack, 'd = Volume("rn-busy.qcow2", pool=pool, size="16MiB")\n' + vm)
    cli("destroy", str(stack), "--yes", "--allow-destroy")
