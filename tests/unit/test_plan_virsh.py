"""`plan --commands` as data: which virsh commands each change gets (the integration test
replays them on a real host), and that no secret is printed."""

from __future__ import annotations

import re
import subprocess

from plan_review_fixtures import PASSWORD, URI, VNC_PASSWORD, scenario

from virtplan.apply.steps import STEPS, Context, operations
from virtplan.apply.steps.pool import StopPool
from virtplan.apply.steps.shell import heredoc
from virtplan.apply.steps.vm import GracefulStop
from virtplan.apply.steps.vm_live import HOT
from virtplan.hosts.observe import ObservedObject
from virtplan.model import Disk, Volume, collecting
from virtplan.model.secrets import Secret
from virtplan.plan.changes import Action
from virtplan.plan.planner import make_plan
from virtplan.plan.policy import LIVE, Delivery
from virtplan.views.virsh import plan_commands, script


def commands(tmp_path, kind):
    stack, plan, observed, store, renderer = scenario(tmp_path, kind)
    return plan, plan_commands(plan, stack, renderer, observed, store)


def test_create(tmp_path):
    plan, cmds = commands(tmp_path, "create")
    net = cmds["kvm1/network/lab-net"]
    assert re.match(r"cat > network-lab-net.xml <<'EOF_[0-9a-f]{16}'\n<network>", net[0]) and net[1:] == [
        "virsh net-define network-lab-net.xml", "virsh net-autostart lab-net", "virsh net-start lab-net"]  # fmt: skip
    assert "virsh net-define network-back-net.xml" in "\n".join(cmds["kvm1/network/back-net"])
    assert "virsh net-start back-net" in cmds["kvm1/network/back-net"]
    assert cmds["kvm1/volume/lab-pool/web1.qcow2"][0] == (
        "virsh vol-create-as lab-pool web1.qcow2 1073741824 --format qcow2"
        " --backing-vol /var/lib/virtplan/lab/base.qcow2 --backing-vol-format qcow2"
    )
    web1 = "\n".join(cmds["kvm1/vm/web1"])
    assert (
        "genisoimage -quiet -output seed-web1.iso -volid cidata -joliet -rock seed-web1/meta-data seed-web1/user-data"
        in web1
    )
    assert "virsh vol-upload --pool lab-pool web1-cidata.iso seed-web1.iso" in web1
    assert web1.endswith("virsh define domain-web1.xml\nvirsh start web1")
    text = script(plan, cmds)
    assert text.startswith("#!/bin/sh\n") and "export LIBVIRT_DEFAULT_URI=test:///default" in text
    subprocess.run(["sh", "-n"], input=text, text=True, check=True)  # valid shell


def test_no_secret_is_printed(tmp_path):
    plan, cmds = commands(tmp_path, "create")
    text = script(plan, cmds)
    for secret in (PASSWORD, VNC_PASSWORD):
        digest = Secret(secret).digest()
        for form in (secret, digest, digest[:16]):
            assert form not in text
    assert 'passwd="(sensitive)"' in text and 'graphics-password="(sensitive)"' in text
    assert "# (sensitive) in domain-web1.xml stands for the console password" in text


def test_changes(tmp_path):
    _plan, cmds = commands(tmp_path, "change")
    assert cmds["kvm1/vm/web1"] == ["virsh setmem web1 786432KiB --live --config"]
    db = "\n".join(cmds["kvm1/vm/db"])
    assert "virsh define domain-db.xml\nvirsh shutdown db || true\ntimeout 5 sh -c" in db and db.endswith(
        "virsh start db"
    )
    assert cmds["kvm1/volume/lab-pool/data.raw"] == ["virsh blockresize db vdb 3221225472B"]
    assert cmds["kvm1/volume/lab-pool/scratch"][0] == "virsh vol-delete --pool lab-pool scratch"
    assert cmds["kvm1/vm/old"][-1] == "virsh undefine old --managed-save --snapshots-metadata"
    assert cmds["kvm1/volume/lab-pool/old.qcow2"] == ["virsh vol-delete --pool lab-pool old.qcow2"]
    assert cmds["kvm1/network/lab-net"] == [
        "virsh net-update lab-net add-last ip-dhcp-host "
        '\'<host mac="52:54:00:aa:00:04" name="cache" ip="10.20.0.40"/>\' --config --live'
    ]
    replace = cmds["kvm1/network/back-net"]
    assert replace[:2] == ["virsh net-destroy back-net", "virsh net-undefine back-net"]
    assert "<uuid>" not in replace[2]  # a replacement is a new network


def test_helpers(tmp_path):
    ctx = scenario(tmp_path, "none")
    context = Context(ctx[0], ctx[4], ctx[2]["kvm1"], ctx[3], ctx[0].by_address())
    doc = heredoc("f.xml", "EOF\nx\n")
    marker = re.search(r"<<'(EOF_[0-9a-f]{16})'", doc)
    assert marker and doc == f"cat > f.xml <<'{marker[1]}'\nEOF\nx\n{marker[1]}"  # the marker is no line of it
    assert heredoc("f.txt", "no newline at the end") == "printf '%s' 'no newline at the end' > f.txt"
    assert GracefulStop("a b", 0).shell(context) == ["virsh destroy 'a b'"]
    assert GracefulStop("vm", 2.5).shell(context)[1].startswith("timeout 2.5 sh -c ")


def test_every_change_the_planner_makes_has_a_step():
    fixed = set(Action) - {Action.MIGRATE}  # only VMs move between hosts
    kinds = {"vm": set(Action), "network": fixed, "pool": {Action.CREATE, Action.UPDATE, Action.DELETE},
             "volume": fixed - {Action.RESTART}, "snapshot": {Action.CREATE, Action.DELETE}}  # fmt: skip
    assert set(STEPS) == {(kind, action) for kind, actions in kinds.items() for action in actions}
    assert set(HOT) == {f for f, how in LIVE["vm"].items() if how == Delivery.HOT}


def test_a_replacement_is_printed_as_new_and_the_renderer_kept(tmp_path):
    stack, plan, observed, store, renderer = scenario(tmp_path, "change")
    before = dict(renderer.identities)
    replace = plan_commands(plan, stack, renderer, observed, store)["kvm1/network/back-net"]
    assert "<uuid>" not in "\n".join(replace)
    assert renderer.identities == before


def test_an_inactive_network_redefined_gets_its_reservations_from_the_definition(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    net = observed["kvm1"].objects[("network", "lab-net")]
    net.spec.update(active=False, reservations=[], domain="old.test")
    plan = make_plan(stack, renderer, observed, store)
    [change] = [c for c in plan.changes if c.kind == "network"]
    assert (change.action, change.reason_fields) == (Action.UPDATE, ["domain", "reservations", "active"])
    cmds = plan_commands(plan, stack, renderer, observed, store)["kvm1/network/lab-net"]
    assert 'ip="10.20.0.11"' in cmds[0] and cmds[1:] == [
        "virsh net-define network-lab-net.xml",
        "virsh net-start lab-net",
    ]


def test_hot_fields_of_a_stopped_vm_change_its_definition_only(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    observed["kvm1"].objects[("vm", "db")].spec["state"] = "stopped"
    db = next(v for v in stack.vms if v.name == "db")
    db.memory, db.description, db.state = "512MiB", "d & <2>", "stopped"
    plan = make_plan(stack, renderer, observed, store)
    assert plan_commands(plan, stack, renderer, observed, store)["kvm1/vm/db"] == [
        "virsh setmem db 524288KiB --config", "virsh desc db --config --new-desc 'd & <2>'"]  # fmt: skip


def test_a_disk_appended_to_a_running_vm_is_hot_plugged(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    db = next(v for v in stack.vms if v.name == "db")
    with collecting(stack):
        extra = Volume("extra.qcow2", pool=stack.pools[0], size="1GiB")
    db.disks.append(Disk(extra))
    plan = make_plan(stack, renderer, observed, store)
    change = next(c for c in plan.changes if c.address == "kvm1/vm/db")
    context = Context(stack, renderer, observed["kvm1"], store, stack.by_address())
    names = [type(op).__name__ for op in operations(change, context)]
    assert names == ["DefineDomain", "AttachDevice", "Recorded"]
    cmds = plan_commands(plan, stack, renderer, observed, store)["kvm1/vm/db"]
    assert cmds[-1] == "virsh attach-device db disk-db-lab-pool_extra.qcow2.xml --live"
    assert '<source pool="lab-pool" volume="extra.qcow2"' in cmds[-2]


def test_steps_decide_on_the_records_as_they_were_before_any_change_ran(tmp_path):
    """Apply runs a pool's step after its VMs were deleted (their seeds forgotten); it still
    removes the directory virtplan made, as the printed commands say."""
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    seed = "kvm1/volume/lab-pool/web1-cidata.iso"
    store.put(URI, seed, kind="volume", id="/var/lib/virtplan/lab/web1-cidata.iso", seed_of="kvm1/vm/web1")
    store.put(URI, "kvm1/pool/lab-pool", created_dir=True)
    observed["kvm1"].objects[("volume", "lab-pool/web1-cidata.iso")] = ObservedObject(
        "volume", "lab-pool/web1-cidata.iso", "/var/lib/virtplan/lab/web1-cidata.iso", "", {}
    )
    plan = make_plan(stack, renderer, observed, store, destroy=True)
    printed = plan_commands(plan, stack, renderer, observed, store)["kvm1/pool/lab-pool"]
    assert printed[1] == "virsh pool-delete lab-pool  # removes the empty directory virtplan created"
    context = Context.at(stack, renderer, observed["kvm1"], store, plan)
    store.forget(URI, seed)  # what deleting web1 does before the pool's turn
    pool = next(c for c in plan.changes if c.address == "kvm1/pool/lab-pool")
    assert next(operations(pool, context)) == StopPool("lab-pool", remove_dir=True)
