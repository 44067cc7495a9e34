"""The README's demo, as a user runs it: real probe guests report their addresses from inside."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "virtplan_lab.demo", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def demo_env(tmp_path):
    workdir = Path(tempfile.mkdtemp(prefix="vp-demo-", dir="/var/tmp"))  # short: socket path
    env = {k: v for k, v in os.environ.items() if k != "VIRTPLAN_URI"}
    env.update(
        VIRTPLAN_DEMO_DIR=str(workdir), VIRTPLAN_DEMO_PRIVATE="1", VIRTPLAN_STATE_DIR=str(tmp_path), COLUMNS="200"
    )
    yield env
    demo(env, "--stop")
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.integration
def test_demo_boots_guests_that_confirm_their_addresses(demo_env):
    out = demo(demo_env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "a private libvirtd started for the demo" in text
    assert "Apply complete: 8 change(s) applied." in text
    assert "No changes. The hosts match the stack." in text
    # Each guest's own console line: the reservation for demo-1, a range address for demo-2.
    assert "demo-1: ip=10.77.0.10 hostname=demo-1 instance-id=iid-demo-1 says 'hello from demo-1'" in text
    demo2 = re.search(r"demo-2: ip=10\.77\.0\.(\d+) hostname=demo-2", text)
    assert demo2 and 128 <= int(demo2.group(1)) <= 254
    # show: the leased address, confirmed by the guest.
    assert re.search(r"vm\s+demo-1\s+running .* 10\.77\.0\.10 \(guest confirms\)", text)
    assert re.search(rf"vm\s+demo-2\s+running .* 10\.77\.0\.{demo2.group(1)} \(guest confirms\)", text)

    again = demo(demo_env)  # re-running converges: nothing to do, same answers
    assert again.returncode == 0 and "already running" in again.stdout and "Apply complete" not in again.stdout

    stopped = demo(demo_env, "--stop")
    assert "stopped the private demo libvirtd" in stopped.stdout


def test_demo_without_a_daemon_runs_in_process_on_the_test_driver(tmp_path):
    env = {**os.environ, "VIRTPLAN_URI": "test:///default", "VIRTPLAN_STATE_DIR": str(tmp_path), "COLUMNS": "200"}
    out = demo(env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "cannot upload images or boot guests" in text
    assert "Apply complete: 6 change(s) applied." in text and "No changes." in text
    assert re.search(r"vm\s+demo-2\s+running", text)
