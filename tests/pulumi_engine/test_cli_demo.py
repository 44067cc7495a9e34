"""The repository's Pulumi project driven by the real `pulumi` CLI: stacks/demo.py on a private host.

One scenario, in the order a user goes through it: stack init -> preview --diff -> up (the probe
guests boot and report from inside) -> up again changes nothing -> a memory edit is previewed as
an update and applied live -> a CIDR edit is previewed as a replacement with virtplan's warning ->
an out-of-band `virsh setmem --config` shows up in refresh and up puts it back -> destroy removes
exactly the stack's objects.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import libvirt
from engine_support import Project, summary

from virtplan_lab.probe import GUEST_MEM, wait_for_event, wait_for_guest_line
from virtplan_lab.probe.parse import log_size
from virtplan_lab.testbed import PrivateHost, user_pools

BOOT_TIMEOUT = 120.0
MiB_IN_KIB = 1024
DEMO_POOL = "/var/lib/libvirt/images/virtplan-demo"
VM_TYPE = "pulumi-python:dynamic/virtplan:VM"
NET_TYPE = "pulumi-python:dynamic/virtplan:Network"


def console(host: PrivateHost, vm: str) -> Path:
    """A demo VM's serial console log, read from outside the host's mount namespace."""
    assert host.pid is not None
    return Path(f"/proc/{host.pid}/root{DEMO_POOL}/{vm}-console.log")


def wait_for_mem(log: Path, since: int, at_least: int) -> int:
    """The first MemTotal (KiB) of at least `at_least` the guest reports after offset `since`."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while True:
        event = wait_for_event(log, [GUEST_MEM], max(deadline - time.monotonic(), 0.1), since_offset=since)
        if int(event.fields["mem_kib"]) >= at_least:
            return int(event.fields["mem_kib"])
        since = event.end_offset


def wait_for_leases(conn: libvirt.virConnect, macs: set[str], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leased = {lease["mac"].lower() for lease in conn.networkLookupByName("demo-net").DHCPLeases()}
        if macs <= leased:
            return True
        time.sleep(0.5)
    return False


def virsh(host: PrivateHost, *args: str) -> str:
    return subprocess.run(["virsh", "-c", host.uri, *args], check=True, capture_output=True, text=True).stdout


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def add_foreign_objects(conn: libvirt.virConnect, workdir: Path) -> None:
    """A network, a pool with a volume and a stopped domain that the stack does not declare."""
    conn.networkDefineXML(
        "<network><name>foreign-net</name><bridge name='virbr77'/>"
        "<ip address='10.88.0.1' netmask='255.255.255.0'/></network>"
    )
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>foreign-pool</name><target><path>{workdir}/foreign-pool</path></target></pool>"
    )
    pool.build()
    pool.create()
    pool.createXML("<volume><name>keep.qcow2</name><capacity>1048576</capacity></volume>")
    conn.defineXML(
        "<domain type='qemu'><name>foreign-vm</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )


def inventory(conn: libvirt.virConnect) -> dict[str, list[str]]:
    return {
        "domains": sorted(d.name() for d in conn.listAllDomains()),
        "networks": sorted(n.name() for n in conn.listAllNetworks()),
        "pools": sorted(p.name() for p in user_pools(conn)),
        "volumes": sorted(v.name() for p in user_pools(conn) for v in p.listAllVolumes()),
    }


def test_demo_stack_through_the_pulumi_cli(
    pulumi_bin: Path, private_host: PrivateHost, probe_image: object, tmp_path: Path
) -> None:
    project = Project(tmp_path / "project", tmp_path, passphrase="correct horse battery staple")
    program = project.root / "stacks" / "demo.py"
    conn = private_host.connect()

    project.run("stack", "init", "demo")
    project.run("config", "set", "--path", "virtplan:hosts[0]", f"local={private_host.uri}")

    # -- preview, then up: 8 resources (plus the stack), guests boot and report -------------
    preview = project.run("preview", "--diff")
    assert summary(preview.text) == {"create": 9}, preview.text
    assert f"+ {VM_TYPE}: (create)" in preview.text and 'memory         : "128MiB"' in preview.text
    assert conn.listAllDomains() == []  # a preview changes nothing

    up = project.run("up", "--yes")
    assert summary(up.text) == {"create": 9}, up.text
    reports = {vm: wait_for_guest_line(console(private_host, vm), BOOT_TIMEOUT) for vm in ("demo-1", "demo-2")}
    assert reports["demo-1"]["ip"] == "10.77.0.10"  # the DHCP reservation
    assert re.fullmatch(r"10\.77\.0\.\d+", reports["demo-2"]["ip"]) and reports["demo-2"]["ip"] != "10.77.0.10"
    for vm, report in reports.items():
        assert report["hostname"] == vm and report["instance-id"] == f"iid-{vm}"
        assert report["value"] == f"hello from {vm}"  # read from its cloud-init seed
    ids = {vm: conn.lookupByName(vm).ID() for vm in reports}

    # -- nothing left to do; outputs carry the addresses the guests reported ---------------
    again = project.run("up", "--yes", "--expect-no-changes")
    assert summary(again.text) == {"unchanged": 9}, again.text
    # dnsmasq records a lease just after its ACK, so the guest may report first: wait for libvirt.
    assert wait_for_leases(conn, {r["mac"] for r in reports.values()}), "leases never appeared"
    project.run("up", "--yes", "--refresh")  # picks up demo-2's lease
    vms = project.run("stack", "output", "vms", "--json").json()
    for vm, report in reports.items():
        out = vms[f"local/{vm}"]
        assert out["ipAddresses"] == [report["ip"]] and out["macAddresses"] == [report["mac"]]
        assert out["uuid"] == conn.lookupByName(vm).UUIDString()
    networks = project.run("stack", "output", "networks", "--json").json()
    assert networks["local/demo-net"]["bridgeName"] == conn.networkLookupByName("demo-net").bridgeName()
    volumes = project.run("stack", "output", "volumes", "--json").json()
    assert volumes["local/demo-pool/demo-1.qcow2"]["volumePath"] == f"{DEMO_POOL}/demo-1.qcow2"

    # -- a memory edit: previewed as an update, applied live (same domain IDs) -------------
    marks = {vm: log_size(console(private_host, vm)) for vm in reports}
    edit(program, 'memory="128MiB"', 'memory="192MiB"')
    preview = project.run("preview", "--diff")
    assert summary(preview.text) == {"update": 2, "unchanged": 7}, preview.text
    assert preview.text.count('~ memory         : "128MiB" => "192MiB"') == 2
    assert "virtplan: local/vm" not in preview.text  # live: no restart, nothing destructive
    up = project.run("up", "--yes")
    assert summary(up.text) == {"update": 2, "unchanged": 7}, up.text
    assert {vm: conn.lookupByName(vm).ID() for vm in reports} == ids
    for vm in reports:  # the running guest sees the memory grow (the balloon may give it back in steps)
        grown = wait_for_mem(console(private_host, vm), marks[vm], int(reports[vm]["mem_kib"]) + 48 * MiB_IN_KIB)
        assert grown <= 192 * MiB_IN_KIB
    project.run("preview", "--expect-no-changes")

    # -- a CIDR edit: previewed as a replacement, with virtplan's destructive note ---------
    edit(program, 'cidr="10.77.0.0/24"', 'cidr="10.77.0.0/25"')
    preview = project.run("preview")
    # the guests on it are updated after it: their NICs are re-plugged into the new network
    assert summary(preview.text) == {"replace": 1, "update": 2, "unchanged": 6}, preview.text
    assert f"+- {NET_TYPE} local/demo-net replace [diff: ~cidr]" in preview.text
    assert f"~  {VM_TYPE} local/demo-1 update" in preview.text and f"~  {VM_TYPE} local/demo-2 update" in preview.text
    diagnostics = preview.text.split("Diagnostics:", 1)[1]
    assert f"{NET_TYPE} (local/demo-net):" in diagnostics  # the warning is attached to the network
    assert (
        "warning: virtplan: local/network/demo-net: replace: cidr changed, which forces replacement; "
        "destructive: running VMs lose connectivity until their NICs are re-plugged: demo-1, demo-2"
    ) in diagnostics
    assert conn.networkLookupByName("demo-net").isActive()
    edit(program, 'cidr="10.77.0.0/25"', 'cidr="10.77.0.0/24"')

    # -- drift made outside: refresh shows it, up puts it back ------------------------------
    virsh(private_host, "setmem", "demo-1", "160M", "--config")
    refresh = project.run("refresh", "--yes")
    assert f"~  {VM_TYPE} local/demo-1 update [diff: ~memory]" in refresh.text, refresh.text
    preview = project.run("preview", "--diff")
    assert '~ memory         : "160MiB" => "192MiB"' in preview.text and summary(preview.text)["update"] == 1
    project.run("up", "--yes")
    assert "<currentMemory unit='KiB'>196608</currentMemory>" in virsh(private_host, "dumpxml", "--inactive", "demo-1")
    project.run("preview", "--expect-no-changes")

    # -- destroy: exactly the stack's objects go --------------------------------------------
    add_foreign_objects(conn, private_host.workdir)
    before = inventory(conn)
    assert "demo-1" in before["domains"] and "demo-net" in before["networks"]
    destroy = project.run("destroy", "--yes")
    assert summary(destroy.text) == {"delete": 9}, destroy.text
    assert inventory(conn) == {
        "domains": ["foreign-vm"],
        "networks": ["foreign-net"],
        "pools": ["foreign-pool"],
        "volumes": ["keep.qcow2"],
    }
    conn.close()
