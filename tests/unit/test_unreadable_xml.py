"""A definition libvirt stores but returns as XML that does not parse (libvirt 9.0 writes a VNC
listen that is not an address unescaped) never stops plan, drift, show or destroy: the
object and field are named, the rest of the stack is planned, and apply repairs it."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from virtplan.engine import Engine
from virtplan.model import load_stack
from virtplan.views.drift import drift_lines
from virtplan.views.text import plan_text

STACK = """\
from virtplan import VM, Graphics, Host, Network, NIC, name_stack

name_stack("unreadable")
Host("local", uri="test:///default")
net = Network("ur-net", cidr="10.67.0.0/24")
VM("broken", memory="64MiB", nics=[NIC(net)], graphics=Graphics("vnc"))
VM("fine", memory="{fine_memory}", nics=[NIC(net)])
"""


def break_listen(conn, name: str) -> None:
    """Redefine the domain with a listen address libvirt keeps but cannot write back as XML."""
    dom = conn.lookupByName(name)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    graphics = root.find("devices/graphics")
    graphics.set("listen", "'><x")
    graphics.find("listen").set("address", "'><x")
    conn.defineXML(ET.tostring(root, encoding="unicode"))
    with pytest.raises(ET.ParseError):
        ET.fromstring(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_an_unreadable_definition_is_named_and_repaired(tmp_path: Path):
    path = tmp_path / "unreadable.py"
    path.write_text(STACK.format(fine_memory="64MiB"))
    with Engine(load_stack(path)) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
        break_listen(engine.connection("local"), "broken")

        # the stack is edited meanwhile: the other VM's change is planned as usual
        path.write_text(STACK.format(fine_memory="96MiB"))
        engine.stack = load_stack(path)
        plan, observation = engine.plan()
        changes = {c.address: c for c in plan.changes}
        broken = changes["local/vm/broken"]
        assert broken.action.value == "restart" and broken.changes[0].field == "graphics"
        assert "does not parse" in broken.changes[0].before and "<graphics>" in broken.changes[0].before
        assert "local/vm/fine" in changes
        text = plan_text(plan)
        assert "vm broken" in text and "graphics:" in text

        drift = engine.drift(observation)
        lines = "\n".join(drift_lines(drift, plan.hosts))
        assert "vm broken" in lines and "graphics:" in lines and "does not parse" in lines

        assert engine.inventory(observation)  # show works too

        engine.apply(plan, observation)  # defined again from the stack: readable again
        ET.fromstring(engine.connection("local").lookupByName("broken").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert engine.plan()[0].empty


def test_destroy_goes_on_with_an_unreadable_definition(tmp_path: Path):
    path = tmp_path / "unreadable.py"
    path.write_text(STACK.format(fine_memory="64MiB"))
    with Engine(load_stack(path)) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
        conn = engine.connection("local")
        break_listen(conn, "broken")
        plan, observation = engine.plan(destroy=True)
        assert {c.address for c in plan.changes} >= {"local/vm/broken", "local/vm/fine", "local/network/ur-net"}
        engine.apply(plan, observation, bookkeeping=False)
        assert not {d.name() for d in conn.listAllDomains()} & {"broken", "fine"}
