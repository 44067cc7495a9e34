"""Snapshots on a real host: declared in a stack (taken, kept, deleted by the planner) and on
demand with `virtplan snapshot` for one VM and for a whole environment; reverts verified by
the data in the disk images and by the domain XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest
from clone_support import Cli, holds, write

from virtplan.hosts.chains import writable_disks

STACK = """
from virtplan import VM, Host, Network, Pool, Snapshot, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
net = Network("snap-net", cidr="10.75.0.0/24")
pool = Pool("snap-pool", path="/var/lib/libvirt/images/snap")
run = VM("run", memory="64MiB", disks=[Volume("run.qcow2", pool=pool, size="32MiB")], nics=[net],
         description="declared", shutdown_timeout=0)
off = VM("off", memory="64MiB", state="stopped", shutdown_timeout=0,
         disks=[Volume("off.qcow2", pool=pool, size="32MiB"), Volume("off-data.raw", pool=pool, size="8MiB", format="raw")])
"""
DECLARED = 'Snapshot("declared", vm=off)\n'


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snap")
    stack = tmp / "snap.py"
    stack.write_text(STACK + DECLARED)
    cli = Cli()
    host = f"h={private_host.uri}"
    cli("apply", str(stack), "--host", host, "--yes")
    conn = private_host.connect()
    yield SimpleNamespace(host=private_host, conn=conn, stack=stack, cli=cli, h=host)
    conn.close()


def tops(env, vm: str) -> list[str]:
    return [d.top for d in writable_disks(env.conn, env.conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))]


def no_changes(env) -> None:
    assert "No changes" in env.cli("plan", str(env.stack), "--host", env.h)


def test_declared_snapshot_is_taken_kept_and_removed_by_the_planner(env):
    listed = env.cli("snapshot", "list", str(env.stack), "--host", env.h)
    assert "off" in listed and "declared" in listed and "disk" in listed
    assert tops(env, "off") == ["/var/lib/libvirt/images/snap/off.qcow2.declared",
                                "/var/lib/libvirt/images/snap/off-data.raw.declared"]  # fmt: skip
    no_changes(env)
    env.cli("snapshot", "create", str(env.stack), "off", "--name", "keep", "--host", env.h)
    env.stack.write_text(STACK)  # the declaration is removed
    plan = env.cli("plan", str(env.stack), "--host", env.h)
    assert "- snapshot off/declared" in plan and "destructive" in plan and "off/keep" not in plan
    env.cli("apply", str(env.stack), "--host", env.h, "--yes", "--allow-destroy")
    listed = env.cli("snapshot", "list", str(env.stack), "--host", env.h)
    assert "declared" not in listed and "keep" in listed, "snapshots taken on demand survive apply"
    env.cli("snapshot", "delete", str(env.stack), "off", "--name", "keep", "--host", env.h)
    no_changes(env)


def test_one_vm_create_revert_delete(env):
    top = tops(env, "off")[0]
    write(env.host, top, 0xA1)
    env.cli("snapshot", "create", str(env.stack), "off", "--name", "s1", "--host", env.h)
    top = tops(env, "off")[0]
    write(env.host, top, 0xB2)
    assert holds(env.host, top, 0xB2)
    env.cli("snapshot", "revert", str(env.stack), "off", "--name", "s1", "--host", env.h, rc=1)  # needs --yes
    env.cli("snapshot", "revert", str(env.stack), "off", "--name", "s1", "--host", env.h, "--yes")
    top = tops(env, "off")[0]
    assert holds(env.host, top, 0xA1) and not holds(env.host, top, 0xB2)
    assert not env.conn.lookupByName("off").isActive(), "a stopped VM stays stopped"
    no_changes(env)
    env.cli("snapshot", "delete", str(env.stack), "off", "--name", "s1", "--host", env.h)
    assert "s1" not in env.cli("snapshot", "list", str(env.stack), "--host", env.h)
    env.cli("snapshot", "revert", str(env.stack), "off", "--name", "s1", "--host", env.h, "--yes", rc=1)


def test_whole_environment_snapshot_and_revert(env):
    off_top = tops(env, "off")[1]  # the raw data disk's layer
    write(env.host, off_top, 0xC3)
    before = env.conn.lookupByName("run").ID()
    out = env.cli("snapshot", "create", str(env.stack), "--name", "env", "--host", env.h)
    assert "of 2 VM(s): h/run, h/off" in out
    assert env.conn.lookupByName("run").isActive() and env.conn.lookupByName("run").ID() == before
    write(env.host, tops(env, "off")[1], 0xD4)
    env.cli("snapshot", "revert", str(env.stack), "--name", "env", "--host", env.h, "--yes")
    run = env.conn.lookupByName("run")
    assert run.isActive() and run.ID() != before, "a running VM boots afresh from the reverted disks"
    assert holds(env.host, tops(env, "off")[1], 0xC3) and not holds(env.host, tops(env, "off")[1], 0xD4)
    no_changes(env)
    env.cli("snapshot", "delete", str(env.stack), "--name", "env", "--host", env.h)


def test_revert_checks_before_asking_and_list_says_what_can_be_reverted(env):
    # no such snapshot: said at once, before any question (no --yes, no terminal)
    out = env.cli("snapshot", "revert", str(env.stack), "off", "--name", "nosuch", "--host", env.h, rc=1)
    assert "VM 'off' has no snapshot 'nosuch' taken by this stack" in out and "re-run with --yes" not in out
    env.cli("snapshot", "create", str(env.stack), "run", "--name", "m2", "--memory", "--host", env.h)
    env.cli("snapshot", "create", str(env.stack), "run", "--name", "d2", "--host", env.h)  # freezes m2's files
    listed = env.cli("snapshot", "list", str(env.stack), "--host", env.h).splitlines()
    header = next(line for line in listed if line.startswith("VM"))
    assert header.split() == ["VM", "SNAPSHOT", "KIND", "TAKEN", "HOW", "REVERTABLE"]
    m2 = next(line for line in listed if " m2 " in line)
    d2 = next(line for line in listed if " d2 " in line)
    assert "memory" in m2 and "no: it lives in disk files that were frozen since" in m2
    assert d2.rstrip().endswith("yes")
    out = env.cli("snapshot", "revert", str(env.stack), "run", "--name", "m2", "--host", env.h, rc=1)
    assert "snapshot 'm2' of 'run' can no longer be reverted to" in out and "re-run with --yes" not in out
    listed_json = env.cli("snapshot", "list", str(env.stack), "run", "--format", "json", "--host", env.h)
    assert '"blocked": "it lives in disk files' in listed_json and '"blocked": null' in listed_json
    for name in ("m2", "d2"):
        env.cli("snapshot", "delete", str(env.stack), "run", "--name", name, "--host", env.h)
    no_changes(env)


def test_memory_snapshot_reverts_the_running_vm_and_its_definition(env):
    env.cli("snapshot", "create", str(env.stack), "run", "--name", "m1", "--memory", "--host", env.h)
    dom = env.conn.lookupByName("run")
    flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_AFFECT_LIVE
    dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, "changed after the snapshot", None, None, flags)
    assert "description" in env.cli("plan", str(env.stack), "--host", env.h)
    env.cli("snapshot", "revert", str(env.stack), "run", "--name", "m1", "--host", env.h, "--yes")
    dom = env.conn.lookupByName("run")
    assert dom.isActive()
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    assert root.findtext("description") == "declared"
    no_changes(env)
    listed = env.cli("snapshot", "list", str(env.stack), "--format", "json", "--host", env.h)
    assert '"mode": "memory"' in listed
    env.cli("snapshot", "delete", str(env.stack), "run", "--name", "m1", "--host", env.h)
    assert env.conn.lookupByName("run").snapshotNum() == 0
    env.cli("destroy", str(env.stack), "--host", env.h, "--yes", "--allow-destroy")
    assert not env.conn.listAllDomains()
