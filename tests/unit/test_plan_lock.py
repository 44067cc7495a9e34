"""Apply locks: held by a live process they block (naming it) or make a waiter wait;
left by a dead process they are taken over and reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from virtplan.hosts.locks import ApplyLocks, LockBusy, host_lock_path, stack_lock_path

HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from pathlib import Path
from virtplan.hosts.locks import ApplyLocks
with ApplyLocks("s", Path({state!r}), {{"h": "test:///x"}}):
    print("held", flush=True)
    time.sleep(float(sys.argv[1]))
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("VIRTPLAN_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "state" / "s.json"


def holder(state: Path, seconds: float) -> subprocess.Popen[str]:
    code = HOLD.format(repo=str(Path(__file__).resolve().parents[2]), state=str(state))
    proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ})  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_busy_names_the_holder(env):
    proc = holder(env, 30)
    try:
        with pytest.raises(LockBusy) as err, ApplyLocks("s", env, {"h": "test:///x"}):
            pass
        message = str(err.value)
        assert f"stack 's' is locked by pid {proc.pid} (user " in message and "did not wait" in message
        started = time.monotonic()
        with pytest.raises(LockBusy, match="waited 0.3 s"), ApplyLocks("s", env, {"h": "test:///x"}, timeout=0.3):
            pass
        assert time.monotonic() - started >= 0.3
    finally:
        proc.kill()
        proc.wait()


def test_waiter_gets_the_lock_when_released(env):
    proc = holder(env, 0.5)
    started = time.monotonic()
    with ApplyLocks("s", env, {"h": "test:///x"}, timeout=10) as locks:
        assert time.monotonic() - started > 0.3  # it waited for the holder
        assert proc.wait(timeout=10) == 0
        assert locks.notes() == []  # it released cleanly
        assert json.loads(stack_lock_path(env).read_text())["pid"] == os.getpid()
    assert stack_lock_path(env).read_text() == ""


def test_lock_of_a_killed_process_is_released(env):
    proc = holder(env, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with ApplyLocks("s", env, {"h": "test:///x"}) as locks:
        notes = locks.notes()
    assert len(notes) == 2  # the stack lock and the host lock
    assert f"released the lock on stack 's' left by pid {proc.pid}" in notes[0]


def test_other_stacks_and_hosts_do_not_share_locks(env):
    assert host_lock_path("test:///x", "s") != host_lock_path("test:///x", "t")
    assert host_lock_path("test:///x", "s") != host_lock_path("test:///y", "s")
    proc = holder(env, 30)
    try:
        with ApplyLocks("t", env.with_name("t.json"), {"h": "test:///x"}):
            pass  # another stack on the same host: not blocked
    finally:
        proc.kill()
        proc.wait()
