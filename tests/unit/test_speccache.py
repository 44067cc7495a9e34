"""The spec cache (`virtplan.hosts.speccache`): what a new process takes from its file is
what parsing gives, a copy each time; a broken or foreign file is an empty cache."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from virtplan.documents.parse import Owner, parse_domain
from virtplan.hosts.fetch import xml_key
from virtplan.hosts.speccache import SpecCache


def domain_xml() -> str:
    conn = libvirt.open("test:///default")
    try:
        return str(conn.lookupByName("test").XMLDesc(0))
    finally:
        conn.close()


def test_a_new_process_takes_what_parsing_gave_and_each_get_is_a_copy(tmp_path: Path) -> None:
    xml = domain_xml()
    spec = parse_domain(ET.fromstring(xml))
    owner = Owner("web", "h/vm/test", {"project": "p"})
    cache = SpecCache(tmp_path / "specs")
    cache.put(xml_key(xml), spec, owner)
    cache.put_volume("v", {"format": "qcow2", "capacity": 1024, "backing": None}, "/p/v.qcow2")
    cache.save()

    again = SpecCache(tmp_path / "specs")  # as a new process reads it
    hit = again.get(xml_key(xml))
    assert hit == (spec, owner)
    hit[0]["state"] = "running"
    hit[0]["disks"].clear()
    assert again.get(xml_key(xml)) == (spec, owner)  # the caller's changes are not remembered
    assert again.volume("v") == ({"format": "qcow2", "capacity": 1024, "backing": None}, "/p/v.qcow2")
    assert again.volume(xml_key(xml)) is None and again.get("v") is None  # a domain's is not a volume's
    assert again.get(xml_key(xml + " ")) is None  # another document: parsed afresh


def test_what_a_run_did_not_use_is_dropped_when_it_saves(tmp_path: Path) -> None:
    cache = SpecCache(tmp_path / "specs")
    for name in ("a", "b"):
        cache.put_volume(name, {"capacity": 1}, f"/p/{name}")
    cache.save()
    run = SpecCache(tmp_path / "specs")
    assert run.volume("a") is not None
    run.save()
    assert SpecCache(tmp_path / "specs").volume("b") is None
    assert SpecCache(tmp_path / "specs").volume("a") is not None


def test_a_broken_or_foreign_file_is_an_empty_cache(tmp_path: Path) -> None:
    import marshal

    odd = marshal.dumps({"a": ("volume", "not bytes", "/p/a"), "b": ["vm"], "c": ("disk", b"", None)})
    broken = marshal.dumps({"a": ("volume", b"\xff\x00", "/p/a")})
    for content in (b"", b"\x00garbage\xff", b'{"version": 1, "entries": {}}', b"\xe9", odd, broken):
        (tmp_path / "specs").write_bytes(content)
        cache = SpecCache(tmp_path / "specs")
        assert cache.get("a") is None and cache.volume("a") is None
        cache.put_volume("a", {"capacity": 1}, "/p/a")
        cache.save()  # and it is written afresh
        assert SpecCache(tmp_path / "specs").volume("a") == ({"capacity": 1}, "/p/a")


def test_a_document_with_a_console_password_is_keyed_only_without_it(tmp_path: Path) -> None:
    """The cache's keys are digests of documents: one with the password in it would let the
    cache file confirm a guessed password."""
    from virtplan.hosts.fetch import domain_xml_flags, list_domains
    from virtplan.hosts.observe import HostState, _read_domains, strip_passwords

    conn = libvirt.open("test:///default")
    dom = conn.defineXML(
        "<domain type='test'><name>vnc-pw</name><memory>65536</memory><os><type>hvm</type></os>"
        "<devices><graphics type='vnc' passwd='s3cret'/></devices></domain>"
    )
    try:
        listing = list_domains(conn, domain_xml_flags(secure=True))
    finally:
        dom.undefine()
        conn.close()
    ((_, _, xml, key),) = [x for x in listing.xmls if x[0] == "vnc-pw"]
    assert xml is not None and "s3cret" in xml and key is None  # not keyed where it was fetched
    assert all(k == xml_key(x) for n, _, x, k in listing.xmls if n != "vnc-pw" and x is not None)

    cache = SpecCache(tmp_path / "specs")
    _read_domains(listing, HostState("h", "test:///default", None), {"vnc-pw"}, "s", cache, lambda p: "digest")
    stripped, password = strip_passwords(xml)
    assert password == "s3cret"
    assert cache.get(xml_key(stripped)) is not None and cache.get(xml_key(xml)) is None


def test_a_cache_file_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    import os

    from virtplan.cache import write_atomically

    target = tmp_path / "new" / "folder" / "file"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"

    def broken(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, b"second")
    assert target.read_bytes() == b"first" and os.listdir(target.parent) == ["file"]  # no part left behind
