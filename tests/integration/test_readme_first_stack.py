"""The README's first stack runs next to the demo on one host (its own names, subnet and
pool): the README's own text, with its Debian URL and checksum placeholder pointed at a
local HTTP server serving a generated image (no internet here)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from virtplan_lab.imageserver import ImageServer

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
FIRST = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.S) if 'name_stack("first")' in b)
DEBIAN = re.search(r'source="(https://cloud\.debian\.org/[^"]+)"', FIRST).group(1)  # type: ignore[union-attr]


def run(env: dict[str, str], *args: str, rc: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "virtplan.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    return out


def test_first_stack_runs_next_to_the_demo(private_host, tmp_path):
    image = tmp_path / "debian-12-genericcloud-amd64.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "2G"], check=True)
    digest = hashlib.sha512(image.read_bytes()).hexdigest()
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "VIRTPLAN_URI": private_host.uri,
           "VIRTPLAN_CACHE_DIR": str(tmp_path / "cache"), "VIRTPLAN_DEMO_GUESTS": "none"}  # fmt: skip
    with ImageServer({"/" + DEBIAN.split("/", 3)[3]: image}) as server:
        first = tmp_path / "first.py"
        text = re.sub(r'sha512="PASTE-[^"]+"', f'sha512="{digest}"', FIRST)
        first.write_text(text.replace(DEBIAN, server.url("/" + DEBIAN.split("/", 3)[3])))
        demo = str(REPO / "stacks" / "demo.py")
        run(env, "apply", demo, "--yes")
        out = run(env, "plan", str(first))
        assert "image: download" in out and "Plan: 5 to add" in out, out
        run(env, "apply", str(first), "--yes")
    for stack, mine, theirs in ((first, "first-", "demo-"), (Path(demo), "demo-", "first-")):
        assert "No changes" in run(env, "plan", str(stack))
        shown = run(env, "show", str(stack))
        assert mine in shown and theirs not in shown, shown
    conn = private_host.connect()
    try:
        assert {"first-1", "demo-1", "demo-2"} <= {d.name() for d in conn.listAllDomains()}
        nets = {n.name(): n.XMLDesc(0) for n in conn.listAllNetworks()}
        assert "10.78.0.1" in nets["first-net"] and "10.77.0.1" in nets["demo-net"]
        assert conn.lookupByName("first-1").isActive()
        conn.lookupByName("first-1").destroy()  # no guest OS answers ACPI: no graceful-stop wait
        run(env, "destroy", str(first), "--yes", "--allow-destroy")
        assert "No changes" in run(env, "plan", demo), "the demo is untouched"
        for name in ("demo-1", "demo-2"):
            conn.lookupByName(name).destroy()
        run(env, "destroy", demo, "--yes", "--allow-destroy")
    finally:
        conn.close()
