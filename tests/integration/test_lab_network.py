"""Private hosts that are machines on a network: addresses, reachability between hosts and
from the caller, ssh and TLS from inside a host (as peer-to-peer migration needs), a live
migration between two hosts, eight hosts at once, subnets unique per process, and a
teardown that leaves nothing behind."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import libvirt
import pytest
from test_testbed import pids_in_netns, process_names

from virtplan_lab.lab import Lab
from virtplan_lab.labnet import CLAIM_DIR, LabNetwork
from virtplan_lab.testbed import SSH_PORT, TLS_PORT, PrivateHost

LabHosts = Callable[..., list[PrivateHost]]


def in_host(host: PrivateHost, *command: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    """Run ``command`` inside the host's mount, network and UTS namespaces; its stdout."""
    assert host.pid is not None
    result = subprocess.run(
        ["nsenter", "-t", str(host.pid), "-m", "-n", "-u", "--", *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command} in {host!r} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def banner(address: str, port: int = SSH_PORT) -> bytes:
    with socket.create_connection((address, port), timeout=5) as sock:
        return sock.recv(64)


def interfaces() -> set[str]:
    return {name for _, name in socket.if_nameindex()}


def test_hosts_are_machines_on_the_lab_network(netlab: Lab, lab_hosts: LabHosts) -> None:
    a, b = lab_hosts(2, ssh=True, tls=True)
    assert a.address != b.address
    assert {a.address, b.address} < set(map(str, netlab.network.subnet.hosts()))
    # From the caller: each host's own sshd (its own host key) and TLS listener.
    assert banner(a.address).startswith(b"SSH-2.0-OpenSSH")
    socket.create_connection((b.address, TLS_PORT), timeout=5).close()
    # Inside a host: its own hostname, eth0 with its address, a default socket path for virt-ssh-helper.
    assert in_host(a, "hostname").strip() == a.name
    assert f"inet {a.address}/24" in in_host(a, "ip", "-4", "address", "show", "dev", "eth0")
    assert in_host(a, "readlink", "/run/libvirt/libvirt-sock").strip() == str(a.socket_path)
    # The hosts see each other: host a reaches host b's sshd and TLS port.
    script = f"exec 3<>/dev/tcp/{b.address}/{SSH_PORT}; head -c 7 <&3"
    assert in_host(a, "bash", "-c", script) == "SSH-2.0"
    # The machine's namespace does not gain the hosts' addresses or a route beyond the lab's /24.
    assert a.address not in subprocess.run(["ip", "-4", "address"], capture_output=True, text=True).stdout


def test_a_host_reaches_another_over_ssh_and_tls_as_libvirt_itself_would(lab_hosts: LabHosts, netlab: Lab) -> None:
    """What peer-to-peer migration needs: the source host's own libvirt client reaches the destination."""
    a, b = lab_hosts(2, ssh=True, tls=True)
    env = netlab.env({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"})
    for uri in (b.ssh_uri, b.tls_uri):
        assert in_host(a, "virsh", "-c", uri, "hostname", env=env).strip() == b.name


def blank_guest_xml(name: str) -> str:
    return f"""
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{name}.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>"""


def test_live_migration_between_two_lab_hosts(lab_hosts: LabHosts) -> None:
    """A running guest with a local disk moves live, peer to peer, with its disk copied: over
    ssh one way and TLS the other (hostnames, host UUIDs and migration addresses differ)."""
    a, b = lab_hosts(2, ssh=True, tls=True)
    for host in (a, b):
        (host.workdir / "lib" / "images").mkdir(exist_ok=True)
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(host.workdir / "lib/images/mover.qcow2"), "64M"], check=True
        )
    conns = {h.name: libvirt.open(uri) for h, uri in ((a, a.ssh_uri), (b, b.tls_uri))}
    try:
        assert conns[a.name].getURI() == a.ssh_uri
        assert conns[a.name].getHostname() != conns[b.name].getHostname()
        domain = conns[a.name].defineXML(blank_guest_xml("mover"))
        domain.create()
        uuid = domain.UUIDString()
        flags = (
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_NON_SHARED_DISK
        )
        for source, target, uri in ((a, b, b.ssh_uri), (b, a, a.tls_uri)):
            conns[source.name].lookupByName("mover").migrateToURI3(uri, {}, flags)
            moved = conns[target.name].lookupByName("mover")
            assert moved.UUIDString() == uuid
            assert moved.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            assert moved.isPersistent()
            assert conns[source.name].listAllDomains() == []
            assert "qemu-system-x86" in process_names(target.namespace_pids())
    finally:
        for conn in conns.values():
            conn.close()


def test_eight_hosts_start_at_once_and_answer_over_ssh(lab_hosts: LabHosts) -> None:
    began = time.monotonic()
    hosts = lab_hosts(8, ssh=True, prefix="fleet")
    started = time.monotonic() - began
    print(f"\n8 lab hosts with sshd started in {started:.2f} s")
    answered = {}
    for host in hosts:
        conn = libvirt.open(host.ssh_uri)
        try:
            answered[host.name] = (conn.getHostname(), conn.getURI())
            assert conn.getType() == "QEMU"
        finally:
            conn.close()
    assert answered == {f"fleet{i}": (f"fleet{i}", hosts[i - 1].ssh_uri) for i in range(1, 9)}
    assert len({h.address for h in hosts}) == 8
    assert started < 60


def test_subnets_and_interfaces_are_unique_per_process() -> None:
    """Two labs at once, in this process and in another, never share a subnet or an interface."""
    child = (
        "import sys, time; from virtplan_lab.labnet import LabNetwork\n"
        "with LabNetwork() as n:\n"
        "    print(n.index, n.interface, flush=True); sys.stdin.read()\n"
    )
    with LabNetwork() as first, LabNetwork() as second:
        other = subprocess.Popen(
            [sys.executable, "-c", child],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            assert other.stdout is not None
            index, interface = other.stdout.readline().split()
            assert len({first.index, second.index, int(index)}) == 3
            assert {first.interface, second.interface, interface} <= interfaces()
        finally:
            other.communicate("", timeout=30)
        assert other.returncode == 0
        assert interface not in interfaces()  # the other process closed its lab


def test_lab_close_leaves_nothing_behind() -> None:
    lab = Lab()
    lab.start()
    try:
        hosts = lab.start_hosts(2, ssh=True, tls=True)
        workdirs = [lab.workdir, *(h.workdir for h in hosts)]
        netns = [os.open(f"/proc/{h.pid}/ns/net", os.O_RDONLY) for h in hosts]
        assert all({"libvirtd", "sshd", "virtlogd"} <= process_names(pids_in_netns(fd)) for fd in netns)
        interface, index = lab.network.interface, lab.network.index
        assert interface in interfaces()
    finally:
        lab.close()
    try:
        assert [pids_in_netns(fd) for fd in netns] == [[], []]
    finally:
        for fd in netns:
            os.close(fd)
    assert interface not in interfaces()
    assert not any(path.exists() for path in workdirs)
    with open(CLAIM_DIR / f"{index}.lock", "wb") as claim:
        fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the subnet is free again
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    assert f"10.250.{index}." not in routes
    lab.close()  # idempotent


def test_blackhole_swallows_connections(netlab: Lab) -> None:
    with pytest.raises(TimeoutError):
        socket.create_connection((netlab.network.blackhole, SSH_PORT), timeout=1.5)


def test_an_address_given_again_answers_at_once() -> None:
    """A new namespace at a slot just freed answers immediately: its MAC is the slot's, so
    the caller's ARP cache (still holding the first one's entry) is right for it too."""
    server = (
        "import socket, sys\n"
        "s = socket.create_server(('0.0.0.0', 7000)); print('ready', flush=True)\n"
        "c, _ = s.accept(); c.sendall(sys.argv[1].encode()); c.close(); sys.stdin.read()\n"
    )
    with LabNetwork() as network:
        for generation in ("first", "second"):
            proc = subprocess.Popen(
                ["unshare", "--net", sys.executable, "-c", server, generation],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
                fd = os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY)
                try:
                    address = network.attach(fd, 7)
                finally:
                    os.close(fd)
                with socket.create_connection((address, 7000), timeout=2) as sock:
                    assert sock.recv(16) == generation.encode()
            finally:
                proc.kill()  # ours; it may still wait in accept() if the connection failed
                proc.communicate(timeout=10)
                network.detach(7)
