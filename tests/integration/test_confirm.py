"""Interactive confirmation on a real terminal (a pty): only "yes" applies, and a
destructive plan names each destructive change before asking."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

STACK = """
from virtplan import Host, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
pool = Pool("confirm-pool", path="/var/lib/libvirt/images/confirm")
{volume}
"""


def run_in_terminal(args: list[str], env: dict[str, str], answer: str, timeout: float = 120) -> tuple[int, str]:
    """Run the CLI with a pty as its terminal, type `answer` at the prompt; (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "virtplan.cli", *args], stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    output = b""
    answered = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"Only 'yes' is accepted" in output:
                os.write(leader, answer.encode() + b"\n")
                answered = True
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(leader)
    text = output.decode(errors="replace").replace("\r\n", "\n")
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # a terminal gets styles


def test_prompt_applies_only_on_yes_and_names_destructive_changes(private_host, tmp_path):
    conn = private_host.connect()
    stack = tmp_path / "confirm.py"
    env = {**os.environ, "VIRTPLAN_URI": private_host.uri, "VIRTPLAN_STATE_DIR": str(tmp_path), "NO_COLOR": "1"}
    stack.write_text(STACK.format(volume='Volume("data.qcow2", pool=pool, size="16MiB")'))

    rc, out = run_in_terminal(["apply", str(stack)], env, "no")
    assert rc == 1 and "not confirmed; nothing was applied." in out
    assert "confirm-pool" not in [p.name() for p in conn.listAllStoragePools()]

    rc, out = run_in_terminal(["apply", str(stack)], env, "yes")
    assert rc == 0 and "Apply complete: 2 change(s) applied." in out, out
    pool = conn.storagePoolLookupByName("confirm-pool")
    assert pool.listVolumes() == ["data.qcow2"]

    stack.write_text(STACK.format(volume=""))  # removing the volume deletes its data
    rc, out = run_in_terminal(["apply", str(stack)], env, "y")  # anything but "yes" refuses
    assert "Destructive changes:" in out and "delete h/volume/confirm-pool/data.qcow2" in out
    assert rc == 1 and pool.listVolumes() == ["data.qcow2"]

    rc, out = run_in_terminal(["apply", str(stack)], env, "yes")
    assert rc == 0, out
    assert pool.listVolumes() == []
    conn.close()


def test_no_terminal_and_no_yes_is_refused(private_host, tmp_path):
    stack = tmp_path / "confirm2.py"
    stack.write_text(STACK.format(volume="").replace("confirm-pool", "confirm2-pool").replace("/confirm", "/confirm2"))
    env = {**os.environ, "VIRTPLAN_URI": private_host.uri, "VIRTPLAN_STATE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", "apply", str(stack)], env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1 and "no terminal to confirm on; nothing was applied. Re-run with --yes." in proc.stderr
    assert Path(stack).exists()
