"""Helpers for the cloning, snapshot and import tests: commands inside a private host's
mount namespace (so the absolute backing paths inside images resolve), and the CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from virtplan_lab.testbed import PrivateHost


def in_host(host: PrivateHost, *command: str, check: bool = True) -> str:
    """Run a command in the host's mount namespace (its /var/lib/libvirt); returns stdout."""
    proc = subprocess.run(["nsenter", "-t", str(host.pid), "-m", *command], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def sha(host: PrivateHost, path: str) -> str:
    """sha256 of a file inside the host."""
    data = Path(f"/proc/{host.pid}/root{path}").read_bytes()
    return hashlib.sha256(data).hexdigest()


def write(host: PrivateHost, path: str, pattern: int, offset: int = 0, length: str = "1M") -> None:
    """Write a byte pattern into an image (qemu-io, through its format and backing chain)."""
    out = in_host(host, "qemu-io", "-c", f"write -P {pattern:#x} {offset} {length}", path)
    assert "wrote" in out, out


def holds(host: PrivateHost, path: str, pattern: int, offset: int = 0, length: str = "1M") -> bool:
    """True if the image (read through its chain, sharing any lock) holds the pattern there."""
    out = in_host(host, "qemu-io", "-r", "-U", "-c", f"read -P {pattern:#x} {offset} {length}", path, check=False)
    return "Pattern verification failed" not in out and "read " in out


def backing_of(conn, path: str) -> str | None:
    import xml.etree.ElementTree as ET

    return ET.fromstring(conn.storageVolLookupByPath(path).XMLDesc(0)).findtext("backingStore/path")


def base_image(folder: Path, pattern: int = 0x11, size: str = "64M") -> Path:
    """A small local qcow2 image with `pattern` in its first MiB (uploaded by stacks)."""
    image = folder / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), size], check=True)
    subprocess.run(["qemu-io", "-c", f"write -P {pattern:#x} 0 1M", str(image)], check=True, capture_output=True)
    return image


class Cli:
    """`python -m virtplan.cli`; state files beside the stacks (as the in-process API keeps
    them, so both see the same ownership records); asserts the exit code."""

    def __init__(self) -> None:
        self.env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}
        for name in ("VIRTPLAN_URI", "VIRTPLAN_STATE_DIR"):
            self.env.pop(name, None)

    def __call__(self, *args: str, rc: int = 0) -> str:
        proc = subprocess.run([sys.executable, "-m", "virtplan.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
        assert "Traceback" not in out, out
        return out
