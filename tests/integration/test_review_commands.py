"""`plan --commands`: the manual path and the automated path agree.

Host A is changed by `virtplan apply`; host B, fresh, by replaying the virsh script that
`virtplan plan --commands` prints for it (with plain `sh`, `virsh` and `genisoimage`). After
each step both hosts hold the same libvirt state, and virtplan itself sees host B as
converged. Step 1 covers creation (network, pool, blank/overlay/uploaded volumes, VMs with
cloud-init seeds, running, stopped, autostart); step 2 covers a live update, a restart with
a new disk and a new seed, a volume grown under a running guest, a network restart,
deletions with graceful stops, and starting a stopped VM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from review_support import Cli, adopt_records, assert_same_state, edit, host_root, host_state

STACK = """\
from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume

STEP = 1
Host("local", domain_type="qemu")
net = Network("rv-net", cidr="10.91.0.0/24", domain="rv.test" if STEP == 1 else "rv2.test")
pool = Pool("rv-pool", path="/var/lib/libvirt/images/rv")
base = Volume("base.qcow2", pool=pool, size="32MiB")
web_root = Volume("web.qcow2", pool=pool, backing=base)
db_root = Volume("db.qcow2", pool=pool, size="32MiB")
data = Volume("data.raw", pool=pool, size="16MiB" if STEP == 1 else "24MiB", format="raw")
image = Volume("image.raw", pool=pool, source="IMAGE", format="raw")
VM("rv-web", memory="128MiB" if STEP == 1 else "160MiB", max_memory="256MiB", max_vcpus=2,
   disks=[web_root], nics=[NIC(net, ip="10.91.0.10")], description=f"web {STEP}",
   cloud_init=CloudInit(user_data="#cloud-config\\nrole: web\\n", sensitive=False), shutdown_timeout=1)
db_disks = [db_root, data] + ([Volume("extra.qcow2", pool=pool, size="16MiB")] if STEP == 2 else [])
VM("rv-db", memory="128MiB", max_memory="128MiB" if STEP == 1 else "192MiB", disks=db_disks, nics=[NIC(net)],
   cloud_init=CloudInit(hostname="db", user_data=f"#cloud-config\\nrole: db {STEP}\\n", sensitive=False),
   shutdown_timeout=1)
if STEP == 1:
    old_root = Volume("old.qcow2", pool=pool, size="16MiB")
    VM("rv-old", memory="96MiB", disks=[old_root, image], nics=[NIC(net, ip="10.91.0.30")],
       cloud_init=CloudInit(user_data="#cloud-config\\nrole: old\\n", sensitive=False), shutdown_timeout=1)
VM("rv-spare", memory="64MiB", autostart=True, state="stopped" if STEP == 1 else "running", shutdown_timeout=1)
"""
VOLATILE = re.compile(r"-console\.log$")


@pytest.fixture(scope="module")
def bed(two_hosts, tmp_path_factory):
    if shutil.which("genisoimage") is None:
        pytest.fail("genisoimage is missing (scripts/setup.sh installs it): the replayed commands build seed ISOs")
    a, b = two_hosts
    tmp = tmp_path_factory.mktemp("commands")
    image = tmp / "image.raw"
    image.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    stack = tmp / "rv.py"
    stack.write_text(STACK.replace("IMAGE", str(image)))
    cli_a, cli_b = Cli(a.uri, tmp / "state-a"), Cli(b.uri, tmp / "state-b")
    conn_a, conn_b = a.connect(), b.connect()
    yield a, b, cli_a, cli_b, conn_a, conn_b, stack, tmp
    conn_a.close()
    conn_b.close()


def replay(cli: Cli, stack: Path, workdir: Path, *flags: str) -> dict:
    """Print --commands for the host, check the JSON form says the same, replay it with sh."""
    text = cli.stdout("plan", str(stack), "--commands")
    script = text[text.index("#!/bin/sh") :]
    doc = json.loads(cli.stdout("plan", str(stack), "--commands", "--format", "json"))
    for change in doc["changes"]:
        assert change["commands"], change["address"]
        assert "\n".join(change["commands"]) in script
    workdir.mkdir()
    (workdir / "replay.sh").write_text(script)
    proc = subprocess.run(["sh", "replay.sh"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"replay failed:\n{script}\n--- output ---\n{proc.stdout}{proc.stderr}"
    return doc


def test_commands_replayed_with_virsh_match_apply(bed):
    a, b, cli_a, cli_b, conn_a, conn_b, stack, tmp = bed

    # Step 1: create everything.
    plan_a = json.loads(cli_a.stdout("plan", str(stack), "--format", "json"))
    doc = replay(cli_b, stack, tmp / "step1")
    assert [(c["address"], c["action"]) for c in doc["changes"]] == [
        (c["address"].replace("local", "local"), c["action"]) for c in plan_a["changes"]
    ]
    script = "\n".join(cmd for c in doc["changes"] for cmd in c["commands"])
    for expected in ("virsh net-define", "virsh net-start rv-net", "virsh pool-define", "virsh pool-start rv-pool",
                     "virsh vol-create-as rv-pool web.qcow2", "--backing-vol /var/lib/libvirt/images/rv/base.qcow2",
                     "virsh vol-upload --pool rv-pool image.raw", "genisoimage", "virsh define", "virsh start rv-web",
                     "virsh autostart rv-spare"):  # fmt: skip
        assert expected in script, expected
    assert "virsh start rv-spare" not in script
    cli_a("apply", str(stack), "--yes")
    assert_same_state(host_state(conn_a, host_root(a), VOLATILE), host_state(conn_b, host_root(b), VOLATILE))
    # virtplan sees the hand-made host as converged (given the ownership record of pools
    # and volumes, which the commands can only describe).
    adopt_records(conn_a, conn_b, "rv")
    assert "No changes." in cli_b("plan", str(stack), "--detailed-exitcode")

    # Step 2: live update, restart with a new disk and seed, grown volume, network restart,
    # deletions, a stopped VM started.
    edit(stack, "STEP = 1", "STEP = 2")
    plan_a = json.loads(cli_a.stdout("plan", str(stack), "--format", "json"))
    actions = {c["address"]: c["action"] for c in plan_a["changes"]}
    assert actions == {
        "local/vm/rv-old": "delete",
        "local/network/rv-net": "restart",
        "local/volume/rv-pool/data.raw": "update",
        "local/volume/rv-pool/extra.qcow2": "create",
        "local/vm/rv-web": "update",
        "local/vm/rv-db": "restart",
        "local/vm/rv-spare": "update",
        "local/volume/rv-pool/old.qcow2": "delete",
    }
    doc = replay(cli_b, stack, tmp / "step2")
    assert {c["address"]: c["action"] for c in doc["changes"]} == actions
    commands = {c["address"]: "\n".join(c["commands"]) for c in doc["changes"]}
    assert "virsh setmem rv-web 163840KiB --live --config" in commands["local/vm/rv-web"]
    assert "virsh desc rv-web --live --config --new-desc 'web 2'" in commands["local/vm/rv-web"]
    assert "virsh blockresize rv-db vdb 25165824B" in commands["local/volume/rv-pool/data.raw"]
    assert re.search(r"virsh shutdown rv-db.*virsh destroy rv-db.*virsh start rv-db", commands["local/vm/rv-db"], re.S)
    assert "virsh undefine rv-old --managed-save" in commands["local/vm/rv-old"]
    assert "virsh vol-delete --pool rv-pool rv-old-cidata.iso" in commands["local/vm/rv-old"]
    assert "virsh net-destroy rv-net" in commands["local/network/rv-net"]
    assert commands["local/vm/rv-spare"] == "virsh start rv-spare"
    cli_a("apply", str(stack), "--yes", "--allow-destroy")
    assert_same_state(host_state(conn_a, host_root(a), VOLATILE), host_state(conn_b, host_root(b), VOLATILE))
    adopt_records(conn_a, conn_b, "rv")
    assert "No changes." in cli_b("plan", str(stack), "--detailed-exitcode")
    assert conn_b.lookupByName("rv-db").isActive() and conn_b.lookupByName("rv-spare").isActive()
