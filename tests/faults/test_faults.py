"""The fault suite (issue 11): an apply killed, cut off from its host, or fed libvirt errors
that look like markup, on a real private host, through the CLI as a user runs it.

1. SIGKILL after k completed actions, for every k of a 20-action apply that also attaches
   a volume holding data: the re-run converges, nothing is left that the stack does not
   account for (orphans), nothing exists twice (duplicates), the data volume's sha256 is
   unchanged, and the next plan is clean.
2. The host's libvirtd restarted mid-apply (early, midway, late): one clear line, no
   traceback, then the re-run converges.
3. libvirt errors carrying `[x]`, `[/bold]` and `[1]`, in every message path (a change's
   progress line and the apply's error, a saved plan's apply, a connection failure):
   printed exactly, exit 1.

Each test adds its figures to the table printed at the end of the test run (see
`pytest_terminal_summary` in tests/conftest.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from review_support import Cli

PREFIX = "fk"
POOL_DIR = "/var/lib/libvirt/images/faults"
DATA = 4 * 1024 * 1024  # bytes of random data on the data volume

BASE = f"""from virtplan import NIC, VM, Host, Network, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
pool = Pool("{PREFIX}-pool", path="{POOL_DIR}")
data = Volume("{PREFIX}-data.raw", pool=pool, size="{DATA}B", format="raw")
"""
#: 20 actions: 4 networks, 8 volumes, 8 VMs (2 running); fk-vm0 also attaches the data volume.
FULL = (
    BASE
    + "".join(f'net{i} = Network("{PREFIX}-net{i}", cidr="10.11{i}.0.0/24")\n' for i in range(4))
    + "".join(
        f'VM("{PREFIX}-vm{i}", memory="64MiB", disks=[Volume("{PREFIX}-vm{i}.qcow2", pool=pool, size="16MiB")'
        + (", data" if i == 0 else "")
        + f'], nics=[net{i % 4}], state="{"running" if i in (1, 2) else "stopped"}", shutdown_timeout=0)\n'
        for i in range(8)
    )
)
ACTIONS = 20


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("faults")
    cli = Cli(private_host.uri, home / "user", cwd=home)
    stack = home / "faults.py"
    stack.write_text(BASE)
    cli("apply", str(stack), "--yes")
    conn = private_host.connect()
    vol = conn.storagePoolLookupByName(f"{PREFIX}-pool").storageVolLookupByName(f"{PREFIX}-data.raw")
    payload = os.urandom(DATA)
    stream = conn.newStream(0)
    vol.upload(stream, 0, DATA, 0)
    stream.send(payload)
    stream.finish()
    conn.close()
    yield {"cli": cli, "stack": stack, "host": private_host, "sha": hashlib.sha256(payload).hexdigest()}
    stack.write_text(BASE)
    cli.run("destroy", str(stack), "--yes", "--allow-destroy")


def data_sha(conn: Any) -> str:
    vol = conn.storagePoolLookupByName(f"{PREFIX}-pool").storageVolLookupByName(f"{PREFIX}-data.raw")
    stream, chunks = conn.newStream(0), []
    vol.download(stream, 0, DATA, 0)
    stream.recvAll(lambda _s, data, acc: acc.append(data), chunks)
    stream.finish()
    return hashlib.sha256(b"".join(chunks)).hexdigest()


def declared() -> set[str]:
    out = {f"network/{PREFIX}-net{i}" for i in range(4)} | {f"vm/{PREFIX}-vm{i}" for i in range(8)}
    out |= {f"volume/{PREFIX}-vm{i}.qcow2" for i in range(8)} | {f"volume/{PREFIX}-data.raw"}
    return out


def inventory(conn: Any) -> tuple[int, int]:
    """(orphans, duplicates): objects of this stack's naming on the host that the full
    stack does not declare (console logs of its VMs aside), and MACs, bridges or UUIDs
    that appear twice."""
    pool = conn.storagePoolLookupByName(f"{PREFIX}-pool")
    pool.refresh(0)
    found = {f"vm/{d.name()}" for d in conn.listAllDomains() if d.name().startswith(PREFIX)}
    found |= {f"network/{n.name()}" for n in conn.listAllNetworks() if n.name().startswith(PREFIX)}
    found |= {f"volume/{v.name()}" for v in pool.listAllVolumes() if not v.name().endswith("-console.log")}
    orphans = len(found - declared())
    macs = Counter(m for d in conn.listAllDomains() for m in re.findall(r"<mac address='([^']+)'", d.XMLDesc(0)))
    bridges = Counter(re.search(r"<bridge name='([^']+)'", n.XMLDesc(0)).group(1) for n in conn.listAllNetworks())  # type: ignore[union-attr]
    uuids = Counter(d.UUIDString() for d in conn.listAllDomains())
    duplicates = sum(c - 1 for counter in (macs, bridges, uuids) for c in counter.values() if c > 1)
    return orphans, duplicates


def kill_after(cli: Cli, stack: Path, k: int) -> tuple[int, list[str]]:
    """Start `apply --yes` and SIGKILL it as soon as it reports its k-th completed change;
    returns (changes it reported done, its output lines)."""
    proc = cli.spawn("apply", str(stack), "--yes", "--allow-destroy")
    assert proc.stdout is not None
    lines, done, planned = [], 0, False
    while True:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        planned = planned or line.startswith("Plan:")
        done += line.strip().startswith("done ")
        if planned and done >= k:
            proc.kill()
            break
    proc.wait()
    return done, lines


def figure(record_property: Any, row: dict[str, Any]) -> None:
    record_property("virtplan-figures", row)


def test_sigkill_after_every_k_completed_actions_converges(env, record_property):
    cli, stack, host = env["cli"], env["stack"], env["host"]
    stack.write_text(FULL)
    first = cli("plan", str(stack))
    assert f"Plan: {ACTIONS} to add, 0 to change live, 0 to restart, 0 to replace, 0 to destroy." in first, first
    failures = []
    for k in range(ACTIONS + 1):
        stack.write_text(BASE)  # back to the data volume alone (it stays)
        cli("apply", str(stack), "--yes", "--allow-destroy")
        stack.write_text(FULL)
        done, _ = kill_after(cli, stack, k)
        started = time.monotonic()
        rerun = cli.run("apply", str(stack), "--yes", "--allow-destroy")
        seconds = time.monotonic() - started
        clean = cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
        conn = host.connect()
        try:
            orphans, duplicates = inventory(conn)
            same = data_sha(conn) == env["sha"]
        finally:
            conn.close()
        row = {"test": "SIGKILL", "k": k, "done before kill": done, "re-run exit": rerun.returncode,
               "re-run s": round(seconds, 1), "orphans": orphans, "duplicates": duplicates,
               "data sha256 same": same, "next plan clean": clean}  # fmt: skip
        figure(record_property, row)
        if rerun.returncode != 0 or orphans or duplicates or not same or not clean or "Traceback" in rerun.stderr:
            failures.append((row, rerun.stdout + rerun.stderr))
    assert not failures, failures


@pytest.mark.parametrize("after", [2, 10, 18])
def test_libvirtd_restarted_mid_apply_is_one_line_and_the_rerun_converges(env, record_property, after):
    cli, stack, host = env["cli"], env["stack"], env["host"]
    stack.write_text(BASE)
    cli("apply", str(stack), "--yes", "--allow-destroy")
    stack.write_text(FULL)
    proc = cli.spawn("apply", str(stack), "--yes", "--allow-destroy")
    assert proc.stdout is not None
    lines, done = [], 0
    while done < after:
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        done += line.strip().startswith("done ")
    host.restart_daemon()
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    one_line = len(errors) == 1 and f"lost the connection to host 'h' ({host.uri})" in errors[0]
    rerun = cli.run("apply", str(stack), "--yes", "--allow-destroy")
    clean = cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    conn = host.connect()
    try:
        orphans, duplicates = inventory(conn)
        same = data_sha(conn) == env["sha"]
    finally:
        conn.close()
    figure(record_property, {"test": "libvirtd restart", "k": after, "done before kill": done,
                             "exit": proc.returncode, "one clear line": one_line, "re-run exit": rerun.returncode,
                             "orphans": orphans, "duplicates": duplicates, "data sha256 same": same,
                             "next plan clean": clean})  # fmt: skip
    assert proc.returncode == 1 and one_line and "Traceback" not in out, out
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert clean and not orphans and not duplicates and same


MARKUP_POOL = "/var/lib/libvirt/images/fk[1][x][/bold]"
MARKUP_STACK = f"""from virtplan import VM, Host, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
pool = Pool("fkm-pool", path="{MARKUP_POOL}")
disk = Volume("fkm.qcow2", pool=pool, size="16MiB")
"""
HOLDER = """<domain type='qemu'><name>fkm-holder</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>
<driver name='qemu' type='qcow2'/><source file='{path}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def test_libvirt_errors_that_look_like_markup_are_printed_verbatim_in_every_message_path(env, record_property):
    cli, host = env["cli"], env["host"]
    stack = env["stack"].parent / "faults-markup.py"
    stack.write_text(MARKUP_STACK)
    cli("apply", str(stack), "--yes")
    conn = host.connect()
    path = conn.storagePoolLookupByName("fkm-pool").storageVolLookupByName("fkm.qcow2").path()
    holder = conn.defineXML(HOLDER.format(path=path))
    holder.create()
    qemu_says = f"Is another process using the image [{path}]?"
    rows = []
    try:
        stack.write_text(MARKUP_STACK + 'VM("fkm-vm", memory="64MiB", disks=[disk], shutdown_timeout=0)\n')
        applied = cli.run("apply", str(stack), "--yes")
        rows.append(("apply: progress line", applied.returncode, qemu_says in applied.stdout))
        rows.append(("apply: error", applied.returncode, qemu_says in applied.stderr))
        plan_file = stack.parent / "faults-markup.plan.json"
        cli("plan", str(stack), "--out", str(plan_file))
        saved = cli.run("apply", str(plan_file))
        rows.append(("apply PLAN.json: progress line", saved.returncode, qemu_says in saved.stdout))
        rows.append(("apply PLAN.json: error", saved.returncode, qemu_says in saved.stderr))
        socket = "/var/tmp/fk[x][/bold]/sock"
        lost = subprocess.run(cli.argv("plan", str(stack)), env={**cli.env, "VIRTPLAN_URI": f"qemu+unix:///system?socket={socket}"},
                              capture_output=True, text=True, cwd=cli.cwd)  # fmt: skip
        rows.append(
            ("connection failure", lost.returncode, f"socket={socket}" in lost.stderr and "[x][/bold]" in lost.stderr)
        )
        for what, code, verbatim in rows:
            figure(record_property, {"test": "markup", "path": what, "exit": code, "printed verbatim": verbatim})
        traceback = any("Traceback" in p.stdout + p.stderr for p in (applied, saved, lost))
        assert all(code == 1 and verbatim for _, code, verbatim in rows) and not traceback, (rows, applied, saved, lost)
    finally:
        holder.destroy()
        holder.undefine()
        conn.close()
        cli.run("destroy", str(stack), "--yes", "--allow-destroy")
