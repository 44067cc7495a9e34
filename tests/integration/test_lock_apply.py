"""Locking with real applies: a second apply of the same stack fails at once naming the
holder, or waits with --lock-timeout and then sees the first one's result (they never
interleave); another stack on the same host applies meanwhile; a killed apply's lock does
not block the next one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

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
    cli = Cli(private_host.uri, tmp / "state", lock_dir=tmp / "locks")
    conn = private_host.connect()
    yield cli, stack, other, conn, tmp
    conn.close()


def wait_for_holder(lock: Path, pid: int, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            holder = json.loads(lock.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") == pid:
            return holder
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} never took {lock}")


def test_concurrent_applies_never_interleave(bed):
    cli, stack, other, conn, tmp = bed
    lock = tmp / "state" / "lk.json.apply.lock"
    cli("apply", str(stack), "--yes")
    edit(stack, 'state="running"', 'state="stopped"')

    first = cli.spawn("apply", str(stack), "--yes")
    holder = wait_for_holder(lock, first.pid)
    assert holder["user"] and holder["machine"] and holder["since"]

    # Fails at once, naming the holder.
    out = cli("apply", str(stack), "--yes", rc=1)
    assert f"stack 'lk' is locked by pid {first.pid} (user {holder['user']} on {holder['machine']}, since" in out
    assert "--lock-timeout" in out and "Nothing was changed" in out
    # Another stack on the same host is not blocked.
    assert "Apply complete" in cli("apply", str(other), "--yes")
    assert first.poll() is None, "the first apply should still be running"

    # Waits, then plans on what the first one did: nothing left to do.
    out = cli("apply", str(stack), "--yes", "--lock-timeout", "60")
    first_out = first.communicate(timeout=60)[0]
    assert first.returncode == 0, first_out
    assert "Apply complete: 1 change(s) applied." in first_out
    assert "No changes." in out and "Apply complete" not in out
    assert not conn.lookupByName("lk-1").isActive()
    assert lock.read_text() == ""  # released cleanly: no holder record left


def test_lock_of_a_killed_apply_does_not_block(bed):
    cli, stack, _other, conn, tmp = bed
    lock = tmp / "state" / "lk.json.apply.lock"
    edit(stack, 'state="stopped"', 'state="running"')
    cli("apply", str(stack), "--yes")
    edit(stack, 'state="running"', 'state="stopped"')

    victim = cli.spawn("apply", str(stack), "--yes")
    wait_for_holder(lock, victim.pid)
    time.sleep(0.5)  # inside the graceful stop
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(timeout=10)
    assert json.loads(lock.read_text())["pid"] == victim.pid  # its record is left behind

    started = time.monotonic()
    out = cli("apply", str(stack), "--yes")
    assert f"note: released the lock on stack 'lk' left by pid {victim.pid}" in out
    assert "which is no longer running" in out
    assert "Apply complete" in out and time.monotonic() - started < 30
    assert not conn.lookupByName("lk-1").isActive()
    assert "No changes." in cli("plan", str(stack))
