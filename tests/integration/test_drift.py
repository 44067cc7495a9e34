"""Drift on a real host: the four out-of-band changes (virsh setmem, a network edited, a
volume deleted, a VM stopped) are each reported field by field, apart from the stack's own
pending changes; `plan` shows them in "Changes outside virtplan"; apply undoes them."""

from __future__ import annotations

import json
import re
import subprocess

import libvirt
import pytest
from review_support import Cli, edit

STACK = """\
from virtplan import NIC, VM, Host, Network, Pool, Volume

Host("local", domain_type="qemu")
net = Network("dr-net", cidr="10.93.0.0/24", domain="dr.test")
pool = Pool("dr-pool", path="/var/lib/libvirt/images/dr")
Volume("data.raw", pool=pool, size="8MiB", format="raw")
VM("dr-1", memory="128MiB", max_memory="256MiB", disks=[Volume("dr-1.qcow2", pool=pool, size="16MiB")],
   nics=[NIC(net, ip="10.93.0.10")], shutdown_timeout=1)
VM("dr-2", memory="96MiB", nics=[NIC(net)], shutdown_timeout=1)
"""


@pytest.fixture(scope="module")
def bed(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    stack = tmp / "dr.py"
    stack.write_text(STACK)
    cli = Cli(private_host.uri, tmp / "state")
    conn = private_host.connect()
    yield cli, stack, conn, private_host
    conn.close()


def virsh(host, *args: str) -> None:
    subprocess.run(["virsh", "-c", host.uri, *args], check=True, capture_output=True)


def test_out_of_band_changes_are_drift(bed):
    cli, stack, conn, host = bed
    cli("apply", str(stack), "--yes")
    assert "No changes outside virtplan." in cli("drift", str(stack), "--detailed-exitcode")

    # 1. someone ran virsh setmem (persistently)
    virsh(host, "setmem", "dr-1", "100M", "--config")
    out = cli("drift", str(stack), "--detailed-exitcode", rc=2)
    assert re.search(r"! vm dr-1\n\s+memory: 128 MiB -> 100 MiB  \(applied -> now\)", out), out

    # 2. someone edited the network (what `virsh net-edit` does: a new definition)
    net = conn.networkLookupByName("dr-net")
    xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE).replace("name='dr.test'", "name='other.test'")
    conn.networkDefineXML(xml)
    out = cli("drift", str(stack), "--detailed-exitcode", rc=2)
    assert re.search(r"! network dr-net\n\s+domain: 'dr.test' -> 'other.test'  \(applied -> now\)", out), out

    # 3. someone deleted a volume
    virsh(host, "vol-delete", "--pool", "dr-pool", "data.raw")
    out = cli("drift", str(stack), "--detailed-exitcode", rc=2)
    assert "! volume dr-pool/data.raw: missing (deleted outside virtplan)" in out

    # 4. someone stopped a VM
    virsh(host, "destroy", "dr-2")
    out = cli("drift", str(stack), "--detailed-exitcode", rc=2)
    assert re.search(r"! vm dr-2\n\s+state: 'running' -> 'stopped'  \(applied -> now\)", out), out
    assert "4 objects changed outside virtplan." in out

    # The stack's own pending change is not drift.
    edit(stack, 'memory="96MiB"', 'memory="112MiB"')
    out = cli("drift", str(stack))
    assert "4 objects changed outside virtplan." in out
    assert "local/vm/dr-2: max_memory, memory" in out.split("pending, not drift")[1]
    doc = json.loads(cli.stdout("drift", str(stack), "--format", "json"))
    assert {d["address"]: d["status"] for d in doc["drift"]} == {
        "local/vm/dr-1": "changed",
        "local/network/dr-net": "changed",
        "local/volume/dr-pool/data.raw": "missing (deleted outside virtplan)",
        "local/vm/dr-2": "changed",
    }
    dr2 = next(d for d in doc["drift"] if d["address"] == "local/vm/dr-2")
    assert dr2["fields"] == [{"field": "state", "applied": "running", "actual": "stopped", "stack": "running"}]

    # plan shows the drift before the actions that undo it (and the pending change).
    out = cli("plan", str(stack))
    head, _, actions = out.partition("Host local (")
    assert head.startswith("Changes outside virtplan")
    for line in ("memory: 128 MiB -> 100 MiB", "domain: 'dr.test' -> 'other.test'", "data.raw: missing",
                 "state: 'running' -> 'stopped'"):  # fmt: skip
        assert line in head, line
    assert "+ volume dr-pool/data.raw" in actions and "memory: 96 MiB -> 112 MiB" in actions
    markdown = cli.stdout("plan", str(stack), "--format", "markdown")
    assert "#### Changes outside virtplan" in markdown
    assert "| vm `dr-1` | memory | 128 MiB | 100 MiB |" in markdown

    # The graph of the same plan: what each object will undergo.
    graph = cli.stdout("graph", str(stack), "--format", "dot", "--plan")
    assert '"local/vm/dr-2" [label="~ vm dr-2", shape=box' in graph
    assert '"local/volume/dr-pool/data.raw" [label="+ volume dr-pool/data.raw"' in graph
    assert '"local/network/dr-net" -> "local/vm/dr-1";' in graph
    mermaid = cli.stdout("graph", str(stack))
    assert mermaid.startswith("flowchart LR\n") and "classDef" not in mermaid  # no plan, no actions

    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert "No changes outside virtplan." in cli("drift", str(stack), "--detailed-exitcode")
    assert "No changes." in cli("plan", str(stack))

    # A deleted object the stack no longer declares: reported once, then forgotten by apply.
    edit(stack, 'Volume("data.raw", pool=pool, size="8MiB", format="raw")', "")
    virsh(host, "vol-delete", "--pool", "dr-pool", "data.raw")
    assert "data.raw: missing (deleted outside virtplan)" in cli("drift", str(stack), rc=0)
    cli("apply", str(stack), "--yes")
    assert "No changes outside virtplan." in cli("drift", str(stack), "--detailed-exitcode")
