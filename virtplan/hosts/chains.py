"""Reading copy-on-write chains: which files a VM writes, what backs onto what.

A frozen disk (see `virtplan.apply.layers`) is a chain of qcow2 layers above the declared
volume; the stack's records list each chain's files. These readers never write: they
tell apply and the guards which files are frozen and who builds on them.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from virtplan.errors import VirtplanError
from virtplan.hosts.pools import refresh_pool
from virtplan.hosts.records import Records


class LayerError(VirtplanError):
    """A disk cannot be frozen or its chain cannot be changed safely."""


# -- reading a domain's disks -----------------------------------------------------------
@dataclass
class DiskInfo:
    """A writable disk of a VM, resolved to the file it writes to."""

    target: str
    top: str  # the file the VM writes to
    format: str
    volume: str | None  # "pool/name" of the declared (bottom) volume, if in a pool


def writable_disks(conn: Any, domain_xml: str) -> list[DiskInfo]:
    """The VM's writable disks (no CD-ROMs, nothing read-only), resolved to files."""
    from virtplan.documents.parse import layered_volume

    out = []
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        source, target, driver = disk.find("source"), disk.find("target"), disk.find("driver")
        if source is None or target is None:
            continue
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        volume: str | None
        if source.get("pool"):
            volume = f"{source.get('pool')}/{source.get('volume')}"
            top = _volume_path(conn, volume)
        elif source.get("file"):
            top = source.get("file", "")
            volume = layered_volume(disk) or _pool_volume_of(conn, top)
        else:
            raise LayerError(f"disk {target.get('dev')} is not a file or pool volume; it cannot be frozen")
        out.append(DiskInfo(target.get("dev", ""), top, fmt, volume))
    return out


def disk_files(domain_xml: str) -> set[str]:
    """Every file a domain's disks name: their sources and those of their backing chains.
    For a definition that does not parse (libvirt can store one), every file attribute in
    it: more rather than fewer, as this guards base images."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        import html  # (only for a definition that does not parse: not imported by every plan)

        return {html.unescape(m[1]) for m in re.finditer(r"""\sfile=['"]([^'"]*)['"]""", domain_xml)}
    return {f for disk in root.iterfind("devices/disk") for el in disk.iter("source") if (f := el.get("file"))}


def _volume_path(conn: Any, key: str) -> str:
    pool, _, name = key.partition("/")
    return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(name).path())


def _pool_volume_of(conn: Any, path: str) -> str | None:
    import libvirt

    try:
        vol = conn.storageVolLookupByPath(path)
    except libvirt.libvirtError:
        return None
    return f"{vol.storagePoolLookupByVolume().name()}/{vol.name()}"


def chain_of(store: Records, uri: str, volume_address: str) -> list[str]:
    """The layer files of a declared volume, top first (empty: the VM writes the volume)."""
    record = store.get(uri, volume_address) or {}
    return list(record.get("layers") or [])


def referenced_files(store: Records, uri: str) -> set[str]:
    """Frozen files that snapshot and freeze records still hold."""
    out: set[str] = set()
    for record in store.records(uri).values():
        if record.get("kind") in ("snapshot", "freeze"):
            out |= set((record.get("disks") or {}).values())
    return out


# -- who builds on what -------------------------------------------------------------------
def backing_map(conn: Any, refresh: bool = True) -> dict[str, list[str]]:
    """backing file -> volumes (by path) whose image backs onto it, over every active pool."""
    import libvirt

    users: dict[str, list[str]] = {}
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        if refresh:
            # files made outside the storage API (qemu-img, snapshots); a busy pool (a volume
            # being built) fails to refresh, and its known volumes still count
            with contextlib.suppress(libvirt.libvirtError):
                refresh_pool(pool)
        try:
            volumes = pool.listAllVolumes()
        except libvirt.libvirtError:
            continue
        for vol in volumes:
            try:
                root = ET.fromstring(vol.XMLDesc(0))
            except libvirt.libvirtError:
                continue  # deleted meanwhile
            backing = root.findtext("backingStore/path")
            if not backing:
                continue
            path = root.findtext("target/path") or vol.path()
            if not backing.startswith("/"):
                backing = posixpath.normpath(posixpath.join(posixpath.dirname(path), backing))
            users.setdefault(backing, []).append(path)
    return users


def dependents(conn: Any, paths: list[str], refresh: bool = True) -> dict[str, list[str]]:
    """For each path, the volumes (paths) whose image backs directly onto it."""
    users = backing_map(conn, refresh)
    return {p: sorted(users.get(p, [])) for p in paths}
