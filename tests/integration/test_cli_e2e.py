"""The demo path through the CLI against a real private libvirtd + QEMU.

apply, no-op re-plan, a live memory increase, a restart change, a replace (refused
without --allow-destroy), removal of a VM, destroy; objects virtplan does not own are
never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import libvirt
import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "stacks" / "demo.py"


class Cli:
    """Runs `python -m virtplan.cli` against one private host with its own state folder."""

    def __init__(self, uri: str, state_dir: Path):
        self.env = {
            **os.environ,
            "VIRTPLAN_URI": uri,
            "VIRTPLAN_STATE_DIR": str(state_dir),
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }

    def __call__(self, *args: str, rc: int = 0) -> str:

        proc = subprocess.run(
            [sys.executable, "-m", "virtplan.cli", *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        out = proc.stdout + proc.stderr
        assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
        assert "Traceback" not in out
        return out


@pytest.fixture(scope="module")
def bed(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    conn = private_host.connect()
    # Objects that exist before virtplan and that it must never touch.
    conn.networkDefineXML(
        "<network><name>bystander-net</name><bridge name='bystbr0'/><ip address='10.99.0.1' prefix='24'/></network>"
    ).create()
    pool = conn.storagePoolDefineXML(
        "<pool type='dir'><name>bystander-pool</name><target><path>/var/lib/libvirt/images/bystander</path></target></pool>"
    )
    pool.build(0)
    pool.create()
    pool.createXML(
        "<volume><name>keep.qcow2</name><capacity>1048576</capacity><target><format type='qcow2'/></target></volume>", 0
    )
    conn.defineXML("<domain type='qemu'><name>bystander</name><memory>65536</memory><os><type>hvm</type></os></domain>")
    stack = tmp / "demo.py"
    # The i686 replace below cannot boot the 64-bit probe kernel, so such guests ignore ACPI:
    # keep the forced-stop fallback short.
    stack.write_text(DEMO.read_text().replace("shutdown_timeout=30", "shutdown_timeout=3"))
    yield Cli(private_host.uri, tmp / "state"), stack, conn, private_host
    conn.close()


def edit(stack: Path, old: str, new: str) -> None:
    text = stack.read_text()
    assert old in text, old
    stack.write_text(text.replace(old, new))


def test_demo_lifecycle(bed):
    cli, stack, conn, host = bed

    out = cli("plan", str(stack))
    assert "Plan: 8 to add, 0 to change live, 0 to restart, 0 to replace, 0 to destroy." in out
    cli("plan", str(stack), "--detailed-exitcode", rc=2)
    assert conn.listAllDomains() and not [d for d in conn.listAllDomains() if d.name().startswith("demo")]

    out = cli("apply", str(stack), "--yes")
    assert "Apply complete: 8 change(s) applied." in out
    vm1 = conn.lookupByName("demo-1")
    assert vm1.isActive() and conn.lookupByName("demo-2").isActive()
    assert conn.networkLookupByName("demo-net").isActive()
    uuid, first_id = vm1.UUIDString(), vm1.ID()
    mac = re.search(r"mac address='([0-9a-f:]+)'", vm1.XMLDesc()).group(1)

    assert "No changes." in cli("plan", str(stack), "--detailed-exitcode")

    out = cli("show", str(stack))
    assert re.search(r"vm\s+demo-1\s+running", out) and mac in out

    # A live memory increase: no restart (same domain id), the running guest has more memory.
    edit(stack, 'memory="128MiB"', 'memory="192MiB"')
    out = cli("plan", str(stack))
    assert "memory: 128 MiB -> 192 MiB  (live)" in out and "Plan: 0 to add, 2 to change live" in out
    cli("apply", str(stack), "--yes")
    vm1 = conn.lookupByName("demo-1")
    assert vm1.ID() == first_id  # not restarted
    # A blank-disk guest has no balloon driver, so libvirt's live view only mirrors QEMU's actual
    # allocation; the in-guest proof of a live change needs a real guest OS (see the probe tests).
    assert "<currentMemory unit='KiB'>196608</currentMemory>" in vm1.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "No changes." in cli("plan", str(stack))

    # A change that needs a restart: the maximum vCPU count.
    edit(stack, "vcpus=1,", "vcpus=2,")
    out = cli("plan", str(stack))
    assert "max_vcpus: 1 -> 2  (restart)" in out and "2 to restart" in out
    cli("apply", str(stack), "--yes")
    vm1 = conn.lookupByName("demo-1")
    assert vm1.isActive() and vm1.ID() != first_id and vm1.info()[3] == 2
    assert vm1.UUIDString() == uuid and mac in vm1.XMLDesc()  # identity kept across the redefine

    # A replace is destructive: refused with --yes alone, nothing changes.
    edit(stack, 'max_memory="256MiB",', 'max_memory="256MiB", arch="i686",')
    out = cli("apply", str(stack), "--yes", rc=1)
    assert "destructive" in out and "--allow-destroy" in out
    assert conn.lookupByName("demo-1").UUIDString() == uuid
    cli("apply", str(stack), "--yes", "--allow-destroy")
    vm1 = conn.lookupByName("demo-1")
    assert vm1.UUIDString() != uuid and "arch='i686'" in vm1.XMLDesc() and vm1.isActive()

    # Removing a VM (and its disk) from the stack deletes exactly those.
    edit(stack, '["10.77.0.10", None]', '["10.77.0.10"]')
    out = cli("plan", str(stack))
    assert "- vm demo-2" in out and "- volume demo-pool/demo-2.qcow2" in out
    cli("apply", str(stack), "--yes", "--allow-destroy")
    names = {d.name() for d in conn.listAllDomains()}
    assert "demo-2" not in names and "demo-1" in names

    # A hand-made volume in virtplan's pool is not virtplan's either.
    conn.storagePoolLookupByName("demo-pool").createXML(
        "<volume><name>hand-made.raw</name><capacity>1024</capacity></volume>", 0
    )
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")
    assert "Apply complete" in out
    assert {d.name() for d in conn.listAllDomains()} == {"bystander"}
    assert {n.name() for n in conn.listAllNetworks()} == {"bystander-net"}
    assert "demo-pool" not in {p.name() for p in conn.listAllStoragePools()}
    assert conn.storagePoolLookupByName("bystander-pool").storageVolLookupByName("keep.qcow2")
    assert "hand-made.raw" in os.listdir(f"/proc/{host.pid}/root/var/lib/libvirt/images/virtplan-demo")
    # Everything is gone, so planning again proposes to create it all.
    assert "Plan: 6 to add" in cli("plan", str(stack), "--detailed-exitcode", rc=2)


def test_invalid_stack_changes_nothing(bed, tmp_path):
    cli, _, conn, _ = bed
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from virtplan import VM, Network\nNetwork('n/1', cidr='10.1.0.0/24')\nVM('x', memory='2 potatoes')\n"
    )
    before = sorted(d.name() for d in conn.listAllDomains())
    out = cli("apply", str(bad), "--yes", rc=1)
    assert "local/network/n/1: name: 'n/1' contains '/'" in out
    assert "local/vm/x: memory: unknown unit 'potatoes'" in out
    assert sorted(d.name() for d in conn.listAllDomains()) == before


def test_unowned_object_with_clashing_name_is_refused(bed, tmp_path):
    cli, _, conn, _ = bed
    clash = tmp_path / "clash.py"
    clash.write_text("from virtplan import Network\nNetwork('bystander-net', cidr='10.98.0.0/24')\n")
    out = cli("apply", str(clash), "--yes", rc=1)
    assert "a network named 'bystander-net' already exists" in out and "virtplan import" in out
    xml = conn.networkLookupByName("bystander-net").XMLDesc()
    assert "10.99.0.1" in xml and "virtplan" not in xml


def test_unreachable_host_is_one_readable_error(tmp_path):
    cli = Cli("qemu+unix:///system?socket=/nonexistent/sock", tmp_path)
    out = cli("plan", str(DEMO), rc=1)
    assert out.startswith("error: cannot connect to host 'local'")
    assert len(out.strip().splitlines()) == 1
