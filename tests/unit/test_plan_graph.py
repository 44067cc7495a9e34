"""The dependency graph as Mermaid and DOT, with and without a plan."""

from __future__ import annotations

import re

from builders import declare
from plan_review_fixtures import lab, scenario

from virtplan.model import NIC, VM, Host, Network
from virtplan.views.graph import dot, mermaid, stack_graph


def test_edges_follow_dependencies():
    g = stack_graph(lab())
    addresses = [n.address for n in g.nodes]
    assert addresses.index("kvm1/network/lab-net") < addresses.index("kvm1/vm/web1")
    assert ("kvm1/pool/lab-pool", "kvm1/volume/lab-pool/base.qcow2") in g.edges
    assert ("kvm1/volume/lab-pool/base.qcow2", "kvm1/volume/lab-pool/web1.qcow2") in g.edges
    assert ("kvm1/volume/lab-pool/web1.qcow2", "kvm1/vm/web1") in g.edges
    assert ("kvm1/network/lab-net", "kvm1/vm/db") in g.edges
    assert all(n.action is None for n in g.nodes)


def test_plan_marks_actions_and_adds_deleted_objects(tmp_path):
    stack, plan, *_ = scenario(tmp_path, "change")
    g = stack_graph(stack, plan)
    nodes = {n.address: n for n in g.nodes}
    assert nodes["kvm1/vm/old"].action == "delete" and nodes["kvm1/vm/old"].destructive
    assert nodes["kvm1/vm/cache"].action == "create"
    assert nodes["kvm1/pool/lab-pool"].action is None
    # a deleted volume goes after the deleted VM that used it
    assert ("kvm1/volume/lab-pool/old.qcow2", "kvm1/vm/old") in g.edges
    text = mermaid(g)
    assert text.startswith("flowchart LR\n")
    ids = {n.address: f"n{i}" for i, n in enumerate(g.nodes)}
    assert re.search(rf"class [n0-9,]*\b{ids['kvm1/vm/old']}\b[n0-9,]* delete", text)
    assert f'{ids["kvm1/vm/old"]}["- vm old"]' in text
    assert "stroke-dasharray" in text and "classDef destructive" in text


def test_names_are_escaped():
    with declare("esc") as stack:  # names validation would refuse: the graph must still be inert
        h = Host("h", "test:///default", domain_type="qemu")
        net = Network('we"ird<net>', cidr="10.9.0.0/24", host=h)
        VM("v#1", nics=[NIC(net)], host=h)
    g = stack_graph(stack)
    m = mermaid(g)
    assert "network we#quot;ird#lt;net#gt;" in m and "vm v#35;1" in m
    d = dot(g)
    assert '"h/network/we\\"ird<net>" [label="network we\\"ird<net>"' in d
