"""Ownership is proven on the host, never assumed.

- A file virtplan did not make, lying where a new pool's volume will be, is never taken for
  the stack's own: not when the create fails on it, not on the next plan, not by destroy.
- A domain or network that appears between plan and apply is never taken over.
- A volume of the stack's replaced outside virtplan by another file is no longer its own.
- The same host reached through another URI (a unix socket, ssh, TLS) is the same truth.
- virtplan 0.1's local records move to the hosts on the first apply, once.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import libvirt
import pytest
from review_support import Cli

from virtplan.engine import Engine
from virtplan.model import load_stack


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_foreign_file_where_a_volume_goes_is_never_taken(private_host, tmp_path):
    pool_dir = private_host.workdir / "own1-pool"
    pool_dir.mkdir()
    foreign = pool_dir / "own1-vm.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(foreign), "16M"], check=True)
    digest = sha(foreign)
    stack = tmp_path / "own1.py"
    stack.write_text(
        f'from virtplan import Host, Pool, Volume\nHost("local", domain_type="qemu")\n'
        f'pool = Pool("own1-pool", path="{pool_dir}")\n'
        'Volume("own1-vm.qcow2", pool=pool, size="32MiB")\n'
    )
    cli = Cli(private_host.uri, tmp_path / "home")
    out = cli("apply", str(stack), "--yes", rc=1)  # the pool is made; the volume is refused
    assert "own1-vm.qcow2" in out and "Apply complete" not in out
    out = cli("plan", str(stack), rc=1)
    assert (
        "a volume named 'own1-pool/own1-vm.qcow2' already exists on host 'local' and virtplan did not create it" in out
    )
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")
    assert sha(foreign) == digest and foreign.exists()  # neither grown nor deleted
    conn = private_host.connect()
    try:
        assert "own1-pool" not in [p.name() for p in conn.listAllStoragePools()]  # the pool was the stack's
    finally:
        conn.close()


def test_objects_that_appear_between_plan_and_apply_are_never_taken_over(private_host, tmp_path):
    stack_file = tmp_path / "own2.py"
    stack_file.write_text(
        'from virtplan import VM, Host, Network\nHost("local", domain_type="qemu")\n'
        'net = Network("own2-net", cidr="10.72.0.0/24")\n'
        'VM("own2-vm", memory="32MiB", nics=[net], state="stopped")\n'
    )
    stack = load_stack(stack_file, {"local": private_host.uri})
    conn = private_host.connect()
    try:
        with Engine(stack) as engine, engine.locked():
            plan, observation = engine.plan()
            assert {c.address for c in plan.changes} == {"local/network/own2-net", "local/vm/own2-vm"}
            # someone else, meanwhile
            conn.networkDefineXML("<network><name>own2-net</name><bridge name='vp-foreign2'/></network>")
            conn.defineXML(
                "<domain type='qemu'><name>own2-vm</name><memory unit='MiB'>16</memory>"
                "<os><type arch='x86_64'>hvm</type></os><description>not virtplan's</description></domain>"
            )
            foreign = {
                "net": conn.networkLookupByName("own2-net").XMLDesc(0),
                "vm": conn.lookupByName("own2-vm").XMLDesc(0),
            }  # fmt: skip
            with pytest.raises(Exception) as info:
                engine.apply(plan, observation)
            assert "already exists" in str(info.value)
        assert conn.networkLookupByName("own2-net").XMLDesc(0) == foreign["net"]
        assert conn.lookupByName("own2-vm").XMLDesc(0) == foreign["vm"]
    finally:
        conn.lookupByName("own2-vm").undefine()
        conn.networkLookupByName("own2-net").undefine()
        conn.close()


def test_a_volume_replaced_outside_virtplan_is_no_longer_the_stacks(private_host, tmp_path):
    pool_dir = private_host.workdir / "own3-pool"
    stack = tmp_path / "own3.py"
    stack.write_text(
        f'from virtplan import Host, Pool, Volume\nHost("local", domain_type="qemu")\n'
        f'pool = Pool("own3-pool", path="{pool_dir}")\n'
        'Volume("own3-data.qcow2", pool=pool, size="16MiB")\n'
    )
    cli = Cli(private_host.uri, tmp_path / "home")
    cli("apply", str(stack), "--yes")
    target = pool_dir / "own3-data.qcow2"
    target.unlink()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(target), "48M"], check=True)  # someone's file
    digest = sha(target)
    conn = private_host.connect()
    conn.storagePoolLookupByName("own3-pool").refresh(0)
    conn.close()
    out = cli("plan", str(stack), rc=1)
    assert "own3-pool/own3-data.qcow2" in out and "virtplan did not create it" in out
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")  # the pool goes, the file does not
    plan_part, _, note = out.partition("left alone, not owned by this stack")
    assert "own3-data.qcow2" not in plan_part and "own3-pool/own3-data.qcow2" in note  # never planned for deletion
    assert sha(target) == digest and pool_dir.is_dir()


def test_the_same_host_through_another_transport_is_the_same_truth(netlab, tmp_path):
    host = netlab.add_host(ssh=True, tls=True)
    try:
        stack = tmp_path / "own4.py"
        stack.write_text(
            f'from virtplan import VM, Host, Pool, Volume\nHost("h", domain_type="qemu")\n'
            f'pool = Pool("own4-pool", path="{host.workdir}/own4-pool")\n'
            'VM("own4-vm", memory="32MiB", disks=[Volume("own4.qcow2", pool=pool, size="16MiB")], state="stopped")\n'
        )
        alice, bob = Cli(host.uri, tmp_path / "alice"), Cli(host.uri, tmp_path / "bob")  # two homes, no shared files
        for cli in (alice, bob):
            cli.env.update(netlab.env({}))
        alice("apply", str(stack), "--host", f"h={host.ssh_uri}", "--yes")
        for uri in (host.ssh_uri, host.tls_uri, host.uri):  # bob reaches the host every way
            out = bob("plan", str(stack), "--host", f"h={uri}", "--detailed-exitcode")
            assert "No changes." in out
        bob("destroy", str(stack), "--host", f"h={host.ssh_uri}", "--yes", "--allow-destroy")
        conn = host.connect()
        try:
            assert conn.listAllDomains() == [] and "own4-pool" not in [p.name() for p in conn.listAllStoragePools()]
        finally:
            conn.close()
    finally:
        netlab.remove_host(host)


def test_records_of_virtplan_0_1_move_to_the_hosts_once(private_host, tmp_path):
    """A stack applied by 0.1 (records in .virtplan/<stack>.json, marks without project)."""
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "pyproject.toml").write_text('[tool.virtplan]\nproject = "oldproj"\n')
    pool_dir = private_host.workdir / "own5-pool"
    stack = folder / "own5.py"
    stack.write_text(
        f'from virtplan import VM, Host, Pool, Volume\nHost("local", domain_type="qemu")\n'
        f'pool = Pool("own5-pool", path="{pool_dir}")\n'
        'VM("own5-vm", memory="32MiB", disks=[Volume("own5.qcow2", pool=pool, size="16MiB")], state="stopped")\n'
    )
    conn = private_host.connect()
    # what virtplan 0.1 would have left: objects with name-only marks, and a local record
    pool_dir.mkdir()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>own5-pool</name><target><path>{pool_dir}</path></target></pool>"
    )
    pool.create(0)
    vol = pool.createXML("<volume><name>own5.qcow2</name><capacity unit='M'>16</capacity>"
                         "<target><format type='qcow2'/></target></volume>", 0)  # fmt: skip
    conn.defineXML(
        "<domain type='qemu'><name>own5-vm</name><memory unit='KiB'>32768</memory><currentMemory unit='KiB'>32768</currentMemory>"
        "<vcpu placement='static'>1</vcpu><metadata><virtplan:owner xmlns:virtplan='https://virtplan.dev/xmlns/owner/1' "
        "stack='own5' address='local/vm/own5-vm' shutdown-timeout='60.0'/></metadata>"
        "<os><type arch='x86_64'>hvm</type></os><devices>"
        "<disk type='volume' device='disk'><driver name='qemu' type='qcow2'/><source pool='own5-pool' volume='own5.qcow2'/><target dev='vda' bus='virtio'/></disk>"
        "<serial type='pty'><target port='0'/></serial></devices></domain>"
    )
    legacy = folder / ".virtplan" / "own5.json"
    legacy.parent.mkdir()
    legacy.write_text(json.dumps({"version": 1, "stack": "own5", "hosts": {private_host.uri: {
        "local/pool/own5-pool": {"kind": "pool", "id": pool.UUIDString(), "pending": False, "created_dir": False},
        "local/volume/own5-pool/own5.qcow2": {"kind": "volume", "id": vol.path(), "pending": False},
        "local/vm/own5-vm": {"kind": "vm", "id": conn.lookupByName("own5-vm").UUIDString(), "pending": False},
    }}}))  # fmt: skip
    cli = Cli(private_host.uri, tmp_path / "home", cwd=folder)
    try:
        out = cli("plan", str(stack))  # before the first apply: the local records still count
        assert "cannot plan" not in out
        out = cli("apply", str(stack), "--yes")
        assert "moved 3 record(s) of stack 'oldproj/own5' from this machine to its hosts" in out
        assert not legacy.exists() and legacy.with_name("own5.json.migrated").exists()
        owner = conn.lookupByName("own5-vm").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert 'project="oldproj"' in owner or "project='oldproj'" in owner
        # another user, with nothing local, now sees the same
        other = Cli(private_host.uri, tmp_path / "home2", cwd=folder)
        assert "No changes." in other("plan", str(stack), "--detailed-exitcode")
        assert "moved" not in cli("apply", str(stack), "--yes")  # once
    finally:
        cli("destroy", str(stack), "--yes", "--allow-destroy")
        conn.close()
