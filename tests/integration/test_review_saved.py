"""Saved plans on a real host: `plan --out` then `apply plan.json` applies exactly that plan;
stale plans are refused naming the objects; secrets never reach the plan file, the
Markdown or the commands, yet the saved plan applies them (checked by hash)."""

from __future__ import annotations

import json
import subprocess

import libvirt
import pytest
from review_support import Cli, edit, host_root

from virtplan.documents.seed import read_seed_iso
from virtplan.model.secrets import Secret
from virtplan.plan.planfile import plan_from_document, read_plan

STACK = """\
import os
from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume

Host("local", domain_type="qemu")
net = Network("sv-net", cidr="10.92.0.0/24", domain="sv.test")
pool = Pool("sv-pool", path="/var/lib/libvirt/images/sv")
disk = Volume("sv-1.qcow2", pool=pool, size="32MiB")
VM("sv-1", memory="128MiB", max_memory="256MiB", disks=[disk], nics=[NIC(net, ip="10.92.0.10")],
   cloud_init=CloudInit(user="ops", password=os.environ["SV_PASSWORD"]),
   graphics=Graphics("vnc", password=os.environ["SV_VNC"]), shutdown_timeout=1)
"""
PASSWORD = "cloud-pa55word-xyz"
VNC = "vnc-pw42"


@pytest.fixture(scope="module")
def bed(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("saved")
    stack = tmp / "sv.py"
    stack.write_text(STACK)
    cli = Cli(private_host.uri, tmp / "state", cwd=tmp)
    cli.env.update(SV_PASSWORD=PASSWORD, SV_VNC=VNC)
    conn = private_host.connect()
    yield cli, stack, conn, private_host, tmp
    conn.close()


def secret_forms(value: str) -> list[str]:
    digest = Secret(value).digest()
    return [value, digest, digest[:16]]


def test_saved_plan_applies_exactly_and_holds_no_secrets(bed):
    cli, _stack, conn, host, tmp = bed
    out = cli("plan", "sv.py", "--out", "plan.json", "--detailed-exitcode", rc=2)
    assert "Plan: 4 to add" in out and "Saved the plan to plan.json" in out
    text = (tmp / "plan.json").read_text()
    doc = json.loads(text)
    assert doc["stack"] == "sv" and doc["stack_file"] == "sv.py" and doc["virtplan_version"]
    assert set(doc["observed"]) == {"local/network/sv-net", "local/pool/sv-pool", "local/volume/sv-pool/sv-1.qcow2",
                                    "local/vm/sv-1"}  # fmt: skip
    assert all(v is None for v in doc["observed"].values())  # nothing existed yet
    vm = next(c for c in doc["changes"] if c["address"] == "local/vm/sv-1")
    fields = {f["field"]: f["after"] for f in vm["changes"]}
    assert fields["cloud_init"] == "(sensitive)" and fields["graphics"]["password"] == "(sensitive)"
    # a host the stack was never applied to has no key yet: its secret changes cannot be bound
    assert doc["secrets"]["unbound"] == ["local/vm/sv-1"] and "local/vm/sv-1" not in doc["secrets"]["hashes"]

    # The same object on stdout with --format json; Markdown and commands: no secrets either.
    again = json.loads(cli.stdout("plan", "sv.py", "--format", "json"))
    for volatile in ("created_at", "secrets"):
        again.pop(volatile), doc.pop(volatile)
    assert again == doc
    markdown = cli.stdout("plan", "sv.py", "--format", "markdown", "--commands")
    commands = cli.stdout("plan", "sv.py", "--commands")
    for output in (text, markdown, commands):
        for form in secret_forms(PASSWORD) + secret_forms(VNC):
            assert form not in output
    assert "(sensitive)" in markdown and "(sensitive)" in commands

    # The file round-trips into the same plan.
    loaded = plan_from_document(read_plan(tmp / "plan.json"))
    assert [(c.address, c.action.value, c.reason.value, c.reason_fields, c.why) for c in loaded.changes] == [
        (c["address"], c["action"], c["reason_code"], c["reason_fields"], c["reason"]) for c in doc["changes"]
    ]

    out = cli("apply", "plan.json")
    assert "Apply complete: 4 change(s) applied." in out
    dom = conn.lookupByName("sv-1")
    assert f"passwd='{VNC}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)  # the secret came from the stack
    seed = host_root(host) / "var/lib/libvirt/images/sv/sv-1-cidata.iso"
    assert PASSWORD in read_seed_iso(seed.read_bytes())["user-data"]
    assert "No changes." in cli("plan", "sv.py", "--detailed-exitcode")
    # Applying the same saved plan again: the objects exist now, so it is stale.
    out = cli("apply", "plan.json", rc=1)
    assert "stale plan" in out and "network sv-net appeared after this plan was made" in out


def test_stale_plans_are_refused_naming_the_objects(bed):
    cli, stack, conn, host, _tmp = bed
    memory = lambda: conn.lookupByName("sv-1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)  # noqa: E731
    edit(stack, 'memory="128MiB"', 'memory="192MiB"')

    # A VM changed out of band with virsh after planning.
    cli("plan", "sv.py", "--out", "p1.json")
    subprocess.run(["virsh", "-c", host.uri, "setmem", "sv-1", "150M", "--config"], check=True, capture_output=True)
    out = cli("apply", "p1.json", rc=1)
    assert "error: stale plan: vm sv-1 was changed after this plan was made; run plan again" in out
    assert "<currentMemory unit='KiB'>153600</currentMemory>" in memory()  # nothing was applied

    # A network edited out of band.
    cli("plan", "sv.py", "--out", "p2.json")
    net = conn.networkLookupByName("sv-net")
    net.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
               "<host mac='52:54:00:00:00:99' ip='10.92.0.99'/>",
               libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG | libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)  # fmt: skip
    out = cli("apply", "p2.json", rc=1)
    assert "stale plan: network sv-net was changed after this plan was made; run plan again" in out

    # The stack file edited after planning.
    cli("plan", "sv.py", "--out", "p3.json")
    stack.write_text(stack.read_text() + "\n# a comment\n")
    out = cli("apply", "p3.json", rc=1)
    assert "stale plan: the stack file sv.py changed after this plan was made; run plan again" in out

    # A secret that differs at apply time from the one planned.
    cli("plan", "sv.py", "--out", "p4.json")
    cli.env["SV_VNC"] = "other-pw"
    try:
        out = cli("apply", "p4.json", rc=1)
    finally:
        cli.env["SV_VNC"] = VNC
    assert "the secret values of vm sv-1 (graphics) changed after this plan was made" in out
    assert "<currentMemory unit='KiB'>153600</currentMemory>" in memory()

    # A fresh plan applies; a destructive saved plan needs --allow-destroy.
    cli("plan", "sv.py", "--out", "p5.json")
    cli("apply", "p5.json")
    assert "<currentMemory unit='KiB'>196608</currentMemory>" in memory()
    assert "No changes." in cli("plan", "sv.py")
    edit(stack, 'size="32MiB"', 'size="32MiB", format="raw"')
    cli("plan", "sv.py", "--out", "p6.json")
    out = cli("apply", "p6.json", rc=1)
    assert "destructive" in out and "--allow-destroy" in out
    cli("apply", "p6.json", "--allow-destroy")
    assert "No changes." in cli("plan", "sv.py")
