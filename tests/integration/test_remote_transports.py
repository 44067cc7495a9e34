"""virtplan over qemu+ssh:// (a real sshd, key authentication, verified host keys) and
qemu+tls:// (certificates from a CA made for the run), through the real CLI: plan, apply
(a network, a pool, a volume uploaded through a libvirt stream, a VM started), a no-op
re-plan, destroy; and stacks/lab.py on two hosts at once, one reached over each."""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pytest

from virtplan_lab.lab import Lab
from virtplan_lab.testbed import PrivateHost, user_pools

REPO = Path(__file__).resolve().parents[2]
LAB_STACK = REPO / "stacks" / "lab.py"

SMALL_STACK = '''\
"""A small stack for one remote host: network, pool, an uploaded volume, a blank disk, a VM."""
import os

from virtplan import NIC, VM, Host, Network, Pool, Volume

kvm = Host("kvm", uri="qemu+ssh://root@kvm.example/system", domain_type="qemu")
net = Network("rt-net", host=kvm, mode="nat", cidr="10.66.0.0/24")
pool = Pool("rt-pool", host=kvm, path="/var/lib/libvirt/images/rt")
data = Volume("rt-data.raw", pool=pool, source=os.environ["RT_IMAGE"], format="raw")
root = Volume("rt-root.qcow2", pool=pool, size="256MiB")
VM("rt-vm", host=kvm, vcpus=1, memory="64MiB", disks=[root, data], nics=[NIC(net)], shutdown_timeout=3)
'''


def virtplan(*args: str, env: dict[str, str], rc: int = 0, timeout: float = 300) -> str:
    """Run the real CLI in a subprocess; its stdout + stderr, checking the exit code."""
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    assert "Traceback" not in out
    return out


def cli_env(lab: Lab, state: Path, **extra: str) -> dict[str, str]:
    """The lab's PATH (its ssh wrapper), a private state folder, plain output."""
    return lab.env({**os.environ, "VIRTPLAN_STATE_DIR": str(state), "NO_COLOR": "1", "COLUMNS": "200", **extra})


def download(conn: Any, pool: str, name: str) -> bytes:
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    chunks: list[bytes] = []
    stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
    stream.finish()
    return b"".join(chunks)


@pytest.fixture(params=["ssh", "libssh2", "tls"])
def remote(request: pytest.FixtureRequest) -> tuple[PrivateHost, str]:
    """(host, URI): the module's ssh host over qemu+ssh (the ssh binary) or qemu+libssh2
    (libvirt's built-in client), or its TLS host over qemu+tls."""
    if request.param == "ssh":
        host: PrivateHost = request.getfixturevalue("ssh_host")
        return host, host.ssh_uri
    if request.param == "libssh2":
        host = request.getfixturevalue("ssh_host")
        return host, host.libssh2_uri
    host = request.getfixturevalue("tls_host")
    return host, host.tls_uri


def test_small_stack_lifecycle_over_a_remote_transport(
    remote: tuple[PrivateHost, str], netlab: Lab, tmp_path: Path
) -> None:
    host, uri = remote
    assert uri.startswith(("qemu+ssh://root@", "qemu+libssh2://root@", "qemu+tls://"))
    stack = tmp_path / "remote.py"
    stack.write_text(SMALL_STACK)
    image = tmp_path / "data.raw"
    image.write_bytes(os.urandom(3 * 1024 * 1024 + 4096))  # several stream chunks, not a round size
    env = cli_env(netlab, tmp_path / "state", RT_IMAGE=str(image))
    target = ("--host", f"kvm={uri}")

    out = virtplan("plan", str(stack), *target, env=env)
    assert "Plan: 5 to add" in out
    out = virtplan("apply", str(stack), *target, "--yes", env=env)
    assert "Apply complete: 5 change(s) applied." in out

    local = host.connect()  # the host's own unix socket: what is really there
    try:
        assert local.networkLookupByName("rt-net").isActive()
        assert local.storagePoolLookupByName("rt-pool").isActive()
        assert download(local, "rt-pool", "rt-data.raw") == image.read_bytes()
        vm = local.lookupByName("rt-vm")
        assert vm.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        sources = [
            (d.get("pool"), d.get("volume")) for d in ET.fromstring(vm.XMLDesc()).iterfind("devices/disk/source")
        ]
        assert sources == [("rt-pool", "rt-root.qcow2"), ("rt-pool", "rt-data.raw")]

        assert "No changes." in virtplan("plan", str(stack), *target, "--detailed-exitcode", env=env)

        out = virtplan("destroy", str(stack), *target, "--yes", "--allow-destroy", env=env)
        assert local.listAllDomains() == []
        assert local.listAllNetworks() == []
        assert user_pools(local) == []
    finally:
        local.close()


def test_lab_stack_on_two_hosts_one_over_ssh_one_over_tls(
    lab_hosts: Callable[..., list[PrivateHost]], netlab: Lab, tmp_path: Path
) -> None:
    """stacks/lab.py as written (hosts kvm1, kvm2 with qemu+ssh URIs), pointed at two lab hosts."""
    kvm1, kvm2 = lab_hosts(2, ssh=True, tls=True)
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    env = cli_env(netlab, tmp_path / "state", VIRTPLAN_LAB_IMAGE=str(image))
    hosts = ("--host", f"kvm1={kvm1.ssh_uri}", "--host", f"kvm2={kvm2.tls_uri}")

    out = virtplan("apply", str(LAB_STACK), *hosts, "--yes", env=env)
    assert "Apply complete: 15 change(s) applied." in out
    conns = [kvm1.connect(), kvm2.connect()]
    try:
        assert sorted(d.name() for d in conns[0].listAllDomains() if d.isActive()) == ["web1", "web2", "web3"]
        assert [d.name() for d in conns[1].listAllDomains() if d.isActive()] == ["db1"]
        for conn in conns:  # the base image went up byte for byte over both transports
            assert download(conn, "lab-pool", "base.qcow2") == image.read_bytes()
        assert "No changes." in virtplan("plan", str(LAB_STACK), *hosts, "--detailed-exitcode", env=env)
        virtplan("destroy", str(LAB_STACK), *hosts, "--yes", "--allow-destroy", env=env)
        assert [c.listAllDomains() for c in conns] == [[], []]
    finally:
        for conn in conns:
            conn.close()
