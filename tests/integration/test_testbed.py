"""Private libvirt hosts really work: networks, pools, running guests, isolation, cleanup."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from virtplan_lab import testbed
from virtplan_lab.testbed import HostStartError, PrivateHost, daemon_reachable

GiB = 1024**3


def nat_network_xml(name: str, bridge: str, prefix: str) -> str:
    """A NAT network on ``bridge`` with subnet ``<prefix>.0/24`` and a DHCP range."""
    return f"""
<network>
  <name>{name}</name>
  <forward mode='nat'/>
  <bridge name='{bridge}' stp='on' delay='0'/>
  <ip address='{prefix}.1' netmask='255.255.255.0'>
    <dhcp><range start='{prefix}.100' end='{prefix}.200'/></dhcp>
  </ip>
</network>"""


def start_network(conn: libvirt.virConnect, name: str, bridge: str, prefix: str) -> Any:
    network = conn.networkDefineXML(nat_network_xml(name, bridge, prefix))
    network.create()
    return network


def start_dir_pool(conn: libvirt.virConnect, name: str, path: Path) -> Any:
    xml = f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>"
    pool = conn.storagePoolDefineXML(xml)
    pool.build(0)
    pool.create()
    return pool


def create_qcow2(pool: Any, name: str, capacity: int) -> Any:
    xml = f"""
<volume>
  <name>{name}</name>
  <capacity unit='bytes'>{capacity}</capacity>
  <target><format type='qcow2'/></target>
</volume>"""
    return pool.createXML(xml, 0)


def blank_domain_xml(name: str, pool: str, volume: str, network: str) -> str:
    """A TCG guest: 64 MiB, one blank qcow2 disk, a NIC on ``network``, no graphics."""
    return f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <source network='{network}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>"""


def start_blank_guest(conn: libvirt.virConnect, workdir: Path, tag: str, prefix: str) -> Any:
    """Network ``<tag>-net``, pool ``<tag>-pool`` with a blank disk, and a started guest."""
    start_network(conn, f"{tag}-net", f"vp{tag}0", prefix)
    pool = start_dir_pool(conn, f"{tag}-pool", workdir / f"{tag}-pool")
    create_qcow2(pool, "disk.qcow2", GiB)
    domain = conn.defineXML(blank_domain_xml(f"{tag}-vm", f"{tag}-pool", "disk.qcow2", f"{tag}-net"))
    domain.create()
    return domain


def process_names(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            names.add(Path(f"/proc/{pid}/comm").read_text().strip())
    return names


def pids_named(comm: str) -> list[int]:
    """Live (not zombie) processes whose command name is ``comm``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat.split(") ")[1][0]
            if name == comm and state != "Z":
                found.append(int(entry))
    return found


def mountinfo(pid: int) -> str:
    """The mount table a process sees ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/mountinfo").read_text()
    except OSError:
        return ""


def pids_in_netns(ns_fd: int) -> list[int]:
    """Live processes in the network namespace held open by ``ns_fd``."""
    ns = os.fstat(ns_fd)
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ns.st_dev, ns.st_ino):
            found.append(int(entry))
    return found


def cmdlines_mentioning(text: str) -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and entry != str(os.getpid()):
            found.append(f"{entry}: {cmdline}")
    return found


def run_libvirt_state() -> list[str] | None:
    """What the machine's own /run/libvirt holds (None if it does not exist)."""
    path = Path("/run/libvirt")
    return sorted(str(p) for p in path.rglob("*")) if path.exists() else None


def test_host_serves_its_own_socket(private_host: PrivateHost) -> None:
    assert private_host.socket_path.is_socket()
    assert private_host.socket_path.is_relative_to(private_host.workdir)
    assert str(private_host.workdir) in private_host.uri
    assert daemon_reachable(private_host.uri)
    conn = private_host.connect()
    try:
        assert conn.getType() == "QEMU"
    finally:
        conn.close()


def test_daemon_reachable_is_false_for_a_dead_socket(tmp_path: Path) -> None:
    assert not daemon_reachable(f"qemu+unix:///system?socket={tmp_path}/nothing", timeout=2)


def test_nat_network_lives_in_the_private_namespace(private_host: PrivateHost) -> None:
    conn = private_host.connect()
    try:
        network = start_network(conn, "vp-nat", "virbr10", "192.168.150")
        assert network.isActive()
        assert network.bridgeName() == "virbr10"
        assert "dnsmasq" in process_names(private_host.namespace_pids())
        with pytest.raises(OSError):
            socket.if_nametoindex("virbr10")  # the bridge is not on the machine
    finally:
        conn.close()


def test_dir_pool_holds_a_qcow2_volume(private_host: PrivateHost) -> None:
    conn = private_host.connect()
    try:
        pool = start_dir_pool(conn, "vp-pool", private_host.workdir / "vp-pool")
        volume = create_qcow2(pool, "blank.qcow2", GiB)
        path = Path(volume.path())
        assert path.parent == private_host.workdir / "vp-pool"
        assert path.read_bytes()[:4] == b"QFI\xfb"  # qcow2 magic
        assert volume.info()[1] == GiB
    finally:
        conn.close()


def test_qemu_guest_reaches_running(private_host: PrivateHost) -> None:
    conn = private_host.connect()
    try:
        domain = start_blank_guest(conn, private_host.workdir, "g1", "192.168.151")
        assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert "qemu-system-x86" in process_names(private_host.namespace_pids())
        assert "<source network='g1-net'" in domain.XMLDesc(0)
    finally:
        conn.close()


def test_two_hosts_reuse_bridge_name_and_subnet(
    two_hosts: tuple[PrivateHost, PrivateHost],
) -> None:
    conns = [host.connect() for host in two_hosts]
    try:
        networks = [start_network(c, "labnet", "virbr10", "192.168.210") for c in conns]
        assert all(n.isActive() for n in networks)
        assert [n.bridgeName() for n in networks] == ["virbr10", "virbr10"]
        assert networks[0].UUIDString() != networks[1].UUIDString()
    finally:
        for conn in conns:
            conn.close()


def test_stop_leaves_nothing_behind(make_private_host: Callable[[str], PrivateHost]) -> None:
    run_libvirt_before = run_libvirt_state()
    host = make_private_host("stopper")
    assert host.socket_path.is_relative_to(host.workdir)
    conn = host.connect()
    try:
        start_blank_guest(conn, host.workdir, "g2", "192.168.152")
    finally:
        conn.close()
    assert host.pid is not None
    ns_fd = os.open(f"/proc/{host.pid}/ns/net", os.O_RDONLY)
    try:
        names = process_names(pids_in_netns(ns_fd))
        assert {"libvirtd", "virtlogd", "dnsmasq", "qemu-system-x86"} <= names
        host.stop()
        assert pids_in_netns(ns_fd) == []
    finally:
        os.close(ns_fd)
    assert host.pid is None
    assert cmdlines_mentioning(str(host.workdir)) == []
    host.stop()  # idempotent
    assert run_libvirt_state() == run_libvirt_before


def test_failed_start_reports_the_log_and_leaves_nothing(host_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testbed, "_QEMU_CONF", 'user = "vp-no-such-user"\n')
    host = PrivateHost(host_workdir, "broken")
    with pytest.raises(HostStartError, match="Failed to parse user 'vp-no-such-user'"):
        host.start(timeout=20)
    assert host.pid is None
    # no virtlogd of this host is left (other tests' hosts may start theirs meanwhile)
    assert [p for p in pids_named("virtlogd") if str(host_workdir) in mountinfo(p)] == []
    assert cmdlines_mentioning(str(host_workdir)) == []


@pytest.mark.parametrize(
    "workdir",
    ["/var/tmp/has space", "/run/vp-x", "/etc/libvirt/vp", "/var/tmp/" + "x" * 80],
)
def test_unusable_workdirs_are_refused(workdir: str) -> None:
    with pytest.raises(ValueError):
        PrivateHost(Path(workdir))
