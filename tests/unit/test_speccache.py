"""The spec cache (`virtplan.hosts.speccache`): what a new process takes from its file is
what parsing gives, a copy each time; a broken or foreign file is an empty cache."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt

from virtplan.documents.parse import Owner, parse_domain
from virtplan.hosts.speccache import SpecCache, xml_key


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
