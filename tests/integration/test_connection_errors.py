"""A host that cannot be reached gives one clear line naming the host and the URI, and
exit code 1, quickly: refused, unknown name, ssh authentication refused, a changed ssh
host key, a TLS certificate from the wrong CA, an address nobody answers for, and an
address that swallows packets (bounded by VIRTPLAN_CONNECT_TIMEOUT instead of hanging
for minutes). Each is run through the real CLI against real sshd / libvirtd TLS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from virtplan.errors import ConnectionFailed
from virtplan.hosts.connection import connect
from virtplan_lab.credentials import CertificateAuthority, ssh_keypair
from virtplan_lab.lab import Lab
from virtplan_lab.testbed import PrivateHost

STACK = """\
from virtplan import Host, Network

kvm = Host("kvm", uri="qemu:///system", domain_type="qemu")
Network("err-net", host=kvm, mode="nat", cidr="10.67.0.0/24")
"""

LabHosts = Callable[..., list[PrivateHost]]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("errors") / "errors.py"
    path.write_text(STACK)
    return path


def plan_fails(stack: Path, lab: Lab, uri: str, cause: str, within: float, timeout: str = "30") -> str:
    """`virtplan plan --host kvm=URI` exits 1 within `within` s with one line naming host, URI and cause."""
    env = lab.env({**os.environ, "VIRTPLAN_STATE_DIR": str(stack.parent / "state"), "NO_COLOR": "1"})
    env["VIRTPLAN_CONNECT_TIMEOUT"] = timeout
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", "plan", str(stack), "--host", f"kvm={uri}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=within + 60,
    )
    elapsed = time.monotonic() - began
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: cannot connect to host 'kvm' at {uri}: {cause}: "), lines[0]
    assert elapsed < within, f"took {elapsed:.1f} s: {lines[0]}"
    return lines[0]


def test_refused(stack: Path, netlab: Lab, ssh_host: PrivateHost) -> None:
    plan_fails(stack, netlab, f"qemu+ssh://root@{ssh_host.address}:2222/system", "connection refused", 10)
    # ssh_host runs no TLS listener.
    uri = f"qemu+tls://{ssh_host.address}/system?pkipath={netlab.pki_path}"
    line = plan_fails(stack, netlab, uri, "connection refused", 10)
    assert f"'{ssh_host.address}:16514': Connection refused" in line


def test_unknown_host_name(stack: Path, netlab: Lab) -> None:
    line = plan_fails(stack, netlab, "qemu+ssh://root@kvm9.invalid/system", "host name not found", 10)
    assert "Could not resolve hostname kvm9.invalid" in line
    plan_fails(stack, netlab, f"qemu+tls://kvm9.invalid/system?pkipath={netlab.pki_path}", "host name not found", 10)


def test_ssh_key_not_accepted(stack: Path, netlab: Lab, lab_hosts: LabHosts, tmp_path: Path) -> None:
    (host,) = lab_hosts(1, ssh=True)
    other = ssh_keypair(tmp_path / "other_key", "someone-else")
    (host.ssh_dir / "authorized_keys").write_text(other + "\n")  # the host no longer accepts the lab's key
    line = plan_fails(stack, netlab, host.ssh_uri, "ssh authentication failed", 10)
    assert f"root@{host.address}: Permission denied (publickey)." in line


def test_changed_ssh_host_key(stack: Path, netlab: Lab, lab_hosts: LabHosts) -> None:
    (host,) = lab_hosts(1, ssh=True)
    before = host.ssh_host_public_key
    assert before.split()[1] in netlab.known_hosts.read_text()
    after = host.replace_ssh_host_key()
    assert after != before
    line = plan_fails(stack, netlab, host.ssh_uri, "ssh host key verification failed", 10)
    assert f"Host key for {host.address} has changed" in line
    assert str(netlab.known_hosts) in line
    # libvirt's built-in ssh client, given the same known_hosts in the URI, refuses too.
    line = plan_fails(stack, netlab, host.libssh2_uri, "ssh host key verification failed", 10)
    assert f"Identity of host '{host.address}:22' differs from stored identity" in line


def test_tls_server_certificate_from_another_ca(
    stack: Path, netlab: Lab, tls_host: PrivateHost, tmp_path: Path
) -> None:
    stranger = CertificateAuthority.create(tmp_path / "ca", "some other CA")
    pki = stranger.client_pkipath(tmp_path / "pki", "client")
    uri = f"qemu+tls://{tls_host.address}/system?pkipath={pki}"
    line = plan_fails(stack, netlab, uri, "TLS certificate not trusted", 10)
    assert "Failed to verify peer's certificate" in line


def test_nobody_at_the_address(stack: Path, netlab: Lab) -> None:
    """A free address on the lab's subnet: ARP gets no answer, the kernel says so in ~3 s."""
    free = netlab.network.address(250)
    plan_fails(stack, netlab, f"qemu+tls://{free}/system?pkipath={netlab.pki_path}", "host unreachable", 15)


@pytest.mark.parametrize("transport", ["ssh", "tls"])
def test_blackholed_address_times_out(stack: Path, netlab: Lab, transport: str) -> None:
    """Packets to the black hole are never answered: without a bound, libvirt would wait minutes."""
    address = netlab.network.blackhole
    uri = (
        f"qemu+ssh://root@{address}/system"
        if transport == "ssh"
        else f"qemu+tls://{address}/system?pkipath={netlab.pki_path}"
    )
    line = plan_fails(stack, netlab, uri, "timed out", 3 + 10, timeout="3")
    assert "no answer within 3 s" in line and "VIRTPLAN_CONNECT_TIMEOUT" in line


def test_connect_is_bounded_in_process(netlab: Lab) -> None:
    began = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"^cannot connect to host 'far' at .*: timed out: no answer within 1 s"):
        connect(f"qemu+tls://{netlab.network.blackhole}/system?pkipath={netlab.pki_path}", "far", timeout=1)
    assert time.monotonic() - began < 3


def test_a_bad_timeout_setting_is_a_clear_error(stack: Path, netlab: Lab, ssh_host: PrivateHost) -> None:
    env = {**os.environ, "VIRTPLAN_CONNECT_TIMEOUT": "soon", "VIRTPLAN_STATE_DIR": str(stack.parent / "state")}
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", "plan", str(stack), "--host", f"kvm={ssh_host.ssh_uri}"],
        env=netlab.env(env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: VIRTPLAN_CONNECT_TIMEOUT='soon': write a number of seconds greater than 0\n"
