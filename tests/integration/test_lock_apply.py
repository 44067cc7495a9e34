"""Locking with real applies: a second apply of the same stack fails at once naming the
holder, or waits with --lock-timeout and then sees the first one's result (they never
interleave); another stack on the same host applies meanwhile; a killed apply's lock does
not block the next one."""

from __future__ import annotations

import json
import os
import signal
import time
import xml.etree.ElementTree as ET

import libvirt
import pytest
from review_support import Cli, edit

STACK = """\
from virtplan import VM, Host

Host("local", domain_type="qemu")
# A blank guest ignores the ACPI shutdown request: stopping it takes the whole timeout.
VM("lk-1", memory="64MiB", state="running", shutdown_timeout=4)
"""
OTHER = """\
from virtplan import VM, Host, Network

Host("local", domain_type="qemu")
Network("lk2-net", cidr="10.94.0.0/24")
VM("lk2-1", memory="64MiB", state="stopped")
"""


@pytest.fixture(scope="module")
def bed(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lock")
    stack, other = tmp / "lk.py", tmp / "lk2.py"
    stack.write_text(STACK)
    other.write_text(OTHER)
    cli = Cli(private_host.uri, tmp / "home")
    conn = private_host.connect()
    yield cli, stack, other, conn, tmp
    conn.close()


def lock_holder(conn, stack_key: str) -> dict | None:
    """The holder record of the stack's lock on the host (a libvirt secret), or None."""
    try:
        secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_TLS, f"virtplan-lock:{stack_key}")
    except libvirt.libvirtError:
        return None
    return json.loads(ET.fromstring(secret.XMLDesc(0)).findtext("description") or "{}")


def wait_for_holder(conn, stack_key: str, pid: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = lock_holder(conn, stack_key) or {}
        if holder.get("pid") == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took the lock of {stack_key}")


def test_concurrent_applies_never_interleave(bed):
    cli, stack, other, conn, _tmp = bed
    cli("apply", str(stack), "--yes")
    edit(stack, 'state="running"', 'state="stopped"')

    first = cli.spawn("apply", str(stack), "--yes", "--allow-destroy")  # stopping a running VM is destructive
    holder = wait_for_holder(conn, "lk", first.pid)
    assert holder["user"] and holder["machine"] and holder["since"]

    # Fails at once, naming the holder.
    out = cli("apply", str(stack), "--yes", "--allow-destroy", rc=1)
    assert f"stack 'lk' on host 'local' ({cli.uri}) is locked by pid {first.pid} (user {holder['user']} on " \
        f"{holder['machine']}, since" in out  # fmt: skip
    assert "--lock-timeout" in out and "Nothing was changed" in out
    # Another stack on the same host is not blocked.
    assert "Apply complete" in cli("apply", str(other), "--yes")
    assert first.poll() is None, "the first apply should still be running"

    # Waits, then plans on what the first one did: nothing left to do.
    out = cli("apply", str(stack), "--yes", "--allow-destroy", "--lock-timeout", "60")
    first_out = first.communicate(timeout=60)[0]
    assert first.returncode == 0, first_out
    assert "Apply complete: 1 change(s) applied." in first_out
    assert "No changes." in out and "Apply complete" not in out
    assert f"waiting up to 60 s for the lock on stack 'lk' on host 'local' ({cli.uri}), held by pid {first.pid}" in out
    assert not conn.lookupByName("lk-1").isActive()
    assert lock_holder(conn, "lk") is None  # released cleanly: the lock is gone from the host


def test_lock_of_a_killed_apply_does_not_block(bed):
    cli, stack, _other, conn, _tmp = bed
    edit(stack, 'state="stopped"', 'state="running"')
    cli("apply", str(stack), "--yes")
    edit(stack, 'state="running"', 'state="stopped"')

    victim = cli.spawn("apply", str(stack), "--yes", "--allow-destroy")
    wait_for_holder(conn, "lk", victim.pid)
    time.sleep(0.5)  # inside the graceful stop
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert lock_holder(conn, "lk")["pid"] == victim.pid  # its lock is left behind on the host

    started = time.monotonic()
    out = cli("apply", str(stack), "--yes", "--allow-destroy")
    assert f"note: released the lock on stack 'lk' on host 'local' ({cli.uri}) left by pid {victim.pid}" in out
    assert "which is no longer running" in out
    assert "Apply complete" in out and time.monotonic() - started < 30
    assert not conn.lookupByName("lk-1").isActive()
    assert "No changes." in cli("plan", str(stack))


class _ReleasedMeanwhile:
    """A connection on which another holder's lock exists when our define is refused and is
    gone by the time we look it up (the interleaving two applies at once can produce)."""

    def __init__(self, conn, usage: str):
        self.conn, self.usage, self.clashes = conn, usage, 0

    def __getattr__(self, name):
        return getattr(self.conn, name)

    def secretDefineXML(self, xml: str, flags: int = 0):
        if self.clashes == 0:
            self.clashes += 1
            other = self.conn.secretDefineXML(
                f"<secret ephemeral='yes' private='no'><usage type='tls'><name>{self.usage}</name></usage></secret>"
            )
            try:
                return self.conn.secretDefineXML(xml, flags)  # refused by libvirt: the usage is taken
            finally:
                other.undefine()
        return self.conn.secretDefineXML(xml, flags)


def test_a_lock_released_while_we_were_refused_is_taken(bed):
    from virtplan.hosts.locks import USAGE_PREFIX, Holder, _SecretLock

    conn = bed[3]
    racy = _ReleasedMeanwhile(conn, USAGE_PREFIX + "released-meanwhile")
    lock = _SecretLock(racy, "released-meanwhile", "test")
    try:
        assert lock.try_acquire(Holder.me())
        assert racy.clashes == 1  # libvirt did refuse the first define
        assert lock_holder(conn, "released-meanwhile")["pid"] == os.getpid()
    finally:
        lock.release()
    assert lock_holder(conn, "released-meanwhile") is None


def test_a_define_refused_for_another_reason_is_an_error(bed, private_host):
    from virtplan.hosts.locks import Holder, _SecretLock

    read_only = libvirt.openReadOnly(private_host.uri)
    try:
        with pytest.raises(libvirt.libvirtError, match="read only|read-only|forbidden"):
            _SecretLock(read_only, "read-only", "test").try_acquire(Holder.me())
    finally:
        read_only.close()
