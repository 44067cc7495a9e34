"""`plan --commands` as data: which virsh commands each change gets (the integration test
replays them on a real host), and that no secret is printed."""

from __future__ import annotations

import subprocess

from plan_review_fixtures import PASSWORD, VNC_PASSWORD, scenario

from virtplan.model.secrets import Secret
from virtplan.views.virsh import graceful_stop, heredoc, plan_commands, script


def commands(tmp_path, kind):
    stack, plan, observed, store, renderer = scenario(tmp_path, kind)
    return plan, plan_commands(plan, stack, renderer, observed, store)


def test_create(tmp_path):
    plan, cmds = commands(tmp_path, "create")
    net = cmds["kvm1/network/lab-net"]
    assert net[0].startswith("cat > network-lab-net.xml <<'EOF'\n<network>") and net[1:] == [
        "virsh net-define network-lab-net.xml", "virsh net-autostart lab-net", "virsh net-start lab-net"]  # fmt: skip
    assert "virsh net-define 'network-back_net.xml'" not in "\n".join(cmds["kvm1/network/back|net"])
    assert "virsh net-start 'back|net'" in cmds["kvm1/network/back|net"]
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
    assert cmds["kvm1/vm/old"][-1] == "virsh undefine old --managed-save"
    assert cmds["kvm1/volume/lab-pool/old.qcow2"] == ["virsh vol-delete --pool lab-pool old.qcow2"]
    assert cmds["kvm1/network/lab-net"] == [
        "virsh net-update lab-net add-last ip-dhcp-host "
        '\'<host mac="52:54:00:aa:00:04" name="cache" ip="10.20.0.40"/>\' --config --live'
    ]
    replace = cmds["kvm1/network/back|net"]
    assert replace[:2] == ["virsh net-destroy 'back|net'", "virsh net-undefine 'back|net'"]
    assert "<uuid>" not in replace[2]  # a replacement is a new network


def test_helpers():
    assert heredoc("f.xml", "EOF\nx") == "cat > f.xml <<'EOF_'\nEOF\nx\nEOF_"
    assert graceful_stop("a b", 0) == ["virsh destroy 'a b'"]
    assert graceful_stop("vm", 2.5)[1].startswith("timeout 2.5 sh -c ")
