"""XML fragments are escaped (user strings never inject markup) and readers decide on parsed
XML, not on substrings."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
import pytest

from virtplan.documents import fragments
from virtplan.documents.parse import owner_of
from virtplan.documents.render import NAMESPACE
from virtplan.hosts.chains import disk_files
from virtplan.hosts.observe import _mine

EVIL = "x'/><evil a=\"1\">&amp;</evil><y z='"


def test_element_escapes_attributes_and_text():
    xml = fragments.element("a", {"v": EVIL}, fragments.element("b", text=EVIL))
    root = ET.fromstring(xml)
    assert root.get("v") == EVIL and root.findtext("b") == EVIL and root.find("evil") is None
    assert fragments.element("e", {"k": "a\nb\tc"}) == '<e k="a&#10;b&#9;c"/>'  # kept as is through parsing
    assert ET.fromstring(fragments.element("e", {"k": "a\nb\tc"})).get("k") == "a\nb\tc"


def test_dhcp_host_is_what_virsh_prints():
    assert fragments.dhcp_host("52:54:00:aa:00:04", "10.20.0.40", "cache") == (
        '<host mac="52:54:00:aa:00:04" name="cache" ip="10.20.0.40"/>'
    )
    assert fragments.dhcp_host("52:54:00:aa:00:04", "10.20.0.40") == '<host mac="52:54:00:aa:00:04" ip="10.20.0.40"/>'
    assert ET.fromstring(fragments.dhcp_host("m", "i", EVIL)).get("name") == EVIL


@pytest.mark.parametrize(
    "xml",
    [
        fragments.volume(EVIL, 1024, "raw"),
        fragments.layer_volume(EVIL, 1024, "/p/" + EVIL, "raw"),
    ],
)
def test_volume_documents_are_accepted_by_libvirt(xml):
    conn = libvirt.open("test:///default")
    try:
        pool = conn.storagePoolLookupByName("default-pool")
        vol = pool.createXML(xml, 0)
        assert vol.name() == EVIL
        assert vol.info()[1] == 1024
        vol.delete(0)
    finally:
        conn.close()


def test_snapshot_and_owner_fragments_parse_back():
    snap = ET.fromstring(fragments.memory_snapshot(EVIL, EVIL))
    assert (snap.findtext("name"), snap.findtext("description")) == (EVIL, EVIL)
    disks = ET.fromstring(fragments.external_disk_snapshot([("vda", "/p/" + EVIL), ("vdb", None)]))
    assert [(d.get("name"), d.get("snapshot")) for d in disks.iter("disk")] == [("vda", "external"), ("vdb", "no")]
    assert disks.find("disks/disk/source").get("file") == "/p/" + EVIL  # type: ignore[union-attr]
    assert ET.fromstring(fragments.owner_mark(fragments.owner_attrs(EVIL, "", "h/vm/x", **{"shutdown-timeout": 60.0}))).attrib == {
        "stack": EVIL, "address": "h/vm/x", "shutdown-timeout": "60.0"}  # fmt: skip
    net = fragments.with_owner(
        "<network><name>n</name><uuid>u</uuid></network>", fragments.owner_attrs(EVIL, "", "h/network/n")
    )
    owner = owner_of(ET.fromstring(net))
    assert owner is not None and (owner.stack, owner.address) == (EVIL, "h/network/n")


def domain(stack: str | None, description: str = "") -> str:
    mark = f"<metadata><virtplan:owner xmlns:virtplan='{NAMESPACE}' stack='{stack}' address='h/vm/d'/></metadata>"
    return (f"<domain type='qemu'><name>d</name><description>{description}</description>"
            f"{mark if stack is not None else ''}<memory>1</memory></domain>")  # fmt: skip


def test_ownership_is_read_from_parsed_metadata():
    assert _mine(domain("s"), "s")
    assert not _mine(domain("other"), "s")
    assert not _mine(domain("s-2"), "s")
    assert _mine(domain("a&amp;b"), "a&b")  # the attribute's value, not its spelling
    assert _mine(domain("caf&#233;"), "café") and not _mine(domain("caf&#233;"), "cafe")
    # a foreign domain whose description mentions the namespace and the stack is not ours
    assert not _mine(domain(None, f"see {NAMESPACE} stack='s'"), "s")
    # the mark's namespace declared on the root: read from the whole document
    rooted = (f"<domain xmlns:vp='{NAMESPACE}'><name>d</name><metadata><vp:owner stack='s' address='a'/>"
              "</metadata></domain>")  # fmt: skip
    assert _mine(rooted, "s") and not _mine(rooted, "t")


def test_disk_files_are_the_files_of_disk_sources_and_chains():
    xml = (
        "<domain><devices><disk type='file'><source file='/p/top'/><backingStore type='file'>"
        "<source file='/p/mid'/><backingStore type='volume'><source pool='p' volume='base'/></backingStore>"
        "</backingStore></disk><serial><log file='/p/console.log'/></serial></devices></domain>"
    )
    assert disk_files(xml) == {"/p/top", "/p/mid"}
