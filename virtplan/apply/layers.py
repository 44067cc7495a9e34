"""Copy-on-write layers: freezing a disk so others can build on its current state.

Freezing a VM's disk (for a disk-only snapshot, or so a clone can back onto it) makes the
image the VM writes to read-only for good and puts a new qcow2 layer on top of it, through
a libvirt external disk snapshot, so a running VM never stops. Nothing is copied: the time
does not depend on the disk's size.

The declared volume (say `pool/web1.qcow2`) stays the bottom of the chain and keeps its
name in the stack; the layers above it are owned by the same stack and recorded in its
records on the host:

- each layer: ``<host>/volume/<pool>/<layer>`` with ``layer_of`` = the declared volume's
  address (deleted together with that volume, never as "removed from the stack");
- the declared volume's record: ``layers`` = the chain's files, top first, which is what a
  domain definition must point at (`apply_layers` rewrites rendered XML accordingly);
- each freeze: ``<host>/freeze/<vm>/<label>`` with the frozen file per disk target.

The domain XML carries the chain as ``<backingStore>`` elements ending in the declared
volume, so `virtplan.documents.parse` still sees the disk as that volume and plans stay no-ops.
A frozen file must never be written again: see `dependents`, used to refuse deleting or
growing a volume others back onto.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from virtplan.apply.claims import create_volume, volume_identity
from virtplan.documents.fragments import (
    LAYER_FORMAT,
    domain_with_disk,
    external_disk_snapshot,
    layer_disk,
    layer_volume,
)
from virtplan.hosts.chains import LayerError, chain_of, dependents, writable_disks
from virtplan.hosts.records import Records

_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class FrozenDisk:
    """One disk of a frozen VM: the file that now holds the frozen state, and its format."""

    target: str
    path: str
    format: str
    volume: str  # the declared volume, "pool/name"
    volume_address: str
    capacity: int


@dataclass
class Freeze:
    vm: str
    label: str
    disks: dict[str, FrozenDisk] = field(default_factory=dict)


# -- the chain in a domain definition -----------------------------------------------------
def apply_layers(domain_xml: str, store: Records, uri: str, host: str) -> str:
    """`domain_xml` with every disk on a layered volume pointed at its top layer.

    Rendered XML names the declared volume; writing to it once it is frozen would corrupt
    everything built on it, so every definition virtplan writes goes through here."""
    records = store.records(uri)
    if not any(r.get("layers") for r in records.values()):
        return domain_xml
    root = ET.fromstring(domain_xml)
    changed = False
    for disk in root.iterfind("devices/disk"):
        source = disk.find("source")
        if source is None or not source.get("pool"):
            continue
        key = f"{source.get('pool')}/{source.get('volume')}"
        chain = (records.get(f"{host}/volume/{key}") or {}).get("layers")
        if chain:
            driver = disk.find("driver")
            base_format = driver.get("type", "raw") if driver is not None else "raw"
            layer_disk(disk, chain, key, base_format)
            changed = True
    return ET.tostring(root, encoding="unicode") if changed else domain_xml


# -- freezing -----------------------------------------------------------------------------
def label_for(text: str) -> str:
    """A file-name-safe label."""
    return _LABEL.sub("-", text).strip("-.") or "layer"


def freeze(
    conn: Any,
    dom: Any,
    store: Records,
    uri: str,
    host: str,
    label: str,
    kind: str = "freeze",
    record: dict[str, Any] | None = None,
) -> Freeze:
    """Freeze every writable disk of `dom` (running or not) under `label`.

    Each disk gets a new qcow2 layer beside its current top file, created through the
    storage API and recorded (intent first) in `store`; a libvirt external disk snapshot
    then switches the VM to the new layers atomically. The frozen files are returned.
    With kind="snapshot" the record is a snapshot's, else a freeze's (clones)."""
    import libvirt

    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    disks = writable_disks(conn, xml)
    if not disks:
        raise LayerError(f"VM {dom.name()!r} has no writable disk to freeze")
    vm_address = f"{host}/vm/{dom.name()}"
    result = Freeze(vm_address, label)
    created: list[tuple[Any, str]] = []
    old_chains: dict[str, list[str]] = {}
    tag = label_for(label)
    try:
        new_tops: dict[str, str] = {}
        planned = []
        for d in disks:
            if d.volume is None:
                raise LayerError(
                    f"disk {d.target} of VM {dom.name()!r} ({d.top}) is not in a storage pool; "
                    "only pool volumes can be frozen"
                )
            top_vol = conn.storageVolLookupByPath(d.top)
            pool = top_vol.storagePoolLookupByVolume()
            capacity = int(top_vol.info()[1])
            layer_name = _free_name(pool, f"{d.volume.partition('/')[2]}.{tag}")
            address = f"{host}/volume/{pool.name()}/{layer_name}"
            volume_address = f"{host}/volume/{d.volume}"
            planned.append((d, pool, layer_name, address))
            result.disks[d.target] = FrozenDisk(d.target, d.top, d.format, d.volume, volume_address, capacity)
        # intent first (a crash never leaves a layer nobody owns), one write per step
        store.put_many(uri, {
            address: {"kind": "volume", "pending": True, "layer_of": result.disks[d.target].volume_address,
                      "backing": d.top, "expect": {"format": LAYER_FORMAT, "backing": d.top}}
            for d, _, _, address in planned
        })  # fmt: skip
        for d, pool, layer_name, address in planned:
            layer = pool.createXML(layer_volume(layer_name, result.disks[d.target].capacity, d.top, d.format), 0)
            created.append((layer, address))
            new_tops[d.target] = layer.path()
        # the chain before the switch: should anything stop in between, the next
        # definition still points at the new (empty) layer on the intact old top
        old_chains.update({fd.volume_address: chain_of(store, uri, fd.volume_address) for fd in result.disks.values()})
        identities = {layer.path(): volume_identity(layer) for layer, _ in created}
        updates: dict[str, dict[str, Any]] = {
            address: {"id": new_tops[d.target], "pending": False, "expect": identities[new_tops[d.target]]}
            for d, _, _, address in planned
        }
        for fd in result.disks.values():
            updates[fd.volume_address] = {"layers": [new_tops[fd.target], *old_chains[fd.volume_address]]}
        store.put_many(uri, updates)
        _external_snapshot(dom, new_tops, xml)
    except BaseException:
        for volume_address, chain in old_chains.items():
            store.put(uri, volume_address, layers=chain)
        for layer, address in reversed(created):
            try:
                layer.delete(0)
                store.forget(uri, address)
            except libvirt.libvirtError:
                pass  # stays recorded: a later destroy removes it
        raise
    _redefine_with_chains(conn, dom, store, uri, host)
    fields: dict[str, Any] = {"kind": kind, "vm": vm_address, **(record or {})}
    fields["disks"] = {t: fd.path for t, fd in result.disks.items()}
    fields["formats"] = {t: fd.format for t, fd in result.disks.items()}
    store.put(uri, f"{host}/{kind}/{dom.name()}/{label}", **fields)
    return result


def _free_name(pool: Any, wanted: str) -> str:
    import libvirt

    names: set[str] = set()
    with contextlib.suppress(libvirt.libvirtError):
        names = set(pool.listVolumes())
    name, n = wanted, 1
    while name in names:
        n += 1
        name = f"{wanted}-{n}"
    return name


def _external_snapshot(dom: Any, new_tops: dict[str, str], domain_xml: str) -> None:
    """Switch `dom` to the pre-made layers (REUSE_EXT), keeping no libvirt snapshot metadata:
    virtplan tracks the layers, and libvirt's own deletion would write into frozen files."""
    import libvirt

    disks = []
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        target = disk.find("target")
        dev = target.get("dev", "") if target is not None else ""
        if dev:
            disks.append((dev, new_tops.get(dev)))
    xml = external_disk_snapshot(disks)
    flags = (
        libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REUSE_EXT
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC
    )
    dom.snapshotCreateXML(xml, flags)


def _redefine_with_chains(conn: Any, dom: Any, store: Records, uri: str, host: str) -> None:
    """Write the persistent definition in virtplan's chain form (what `apply_layers` renders),
    whatever form libvirt chose; running domains are not affected until they restart."""
    import libvirt

    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE)
    root = ET.fromstring(xml)
    records = store.records(uri)
    for disk in root.iterfind("devices/disk"):
        info = writable_disks(conn, domain_with_disk(disk))
        if not info or info[0].volume is None:
            continue
        key = info[0].volume
        owner = (records.get(f"{host}/volume/{key}") or {}).get("layer_of")
        if owner:  # libvirt named the layer itself (inactive domains): the volume it belongs to
            key = owner.split("/", 2)[2]
        chain = (records.get(f"{host}/volume/{key}") or {}).get("layers")
        if chain:
            base_format = _volume_format(conn, key)
            layer_disk(disk, chain, key, base_format)
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def _volume_format(conn: Any, key: str) -> str:
    pool, _, name = key.partition("/")
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    fmt = ET.fromstring(vol.XMLDesc(0)).find("target/format")
    return fmt.get("type", "raw") if fmt is not None else "raw"


def set_chain(conn: Any, dom: Any, store: Records, uri: str, host: str, volume_address: str,
              chain: list[str]) -> None:  # fmt: skip
    """Point a volume's disk at `chain` (top first) and redefine the domain accordingly."""
    store.put(uri, volume_address, layers=chain)
    _redefine_with_chains(conn, dom, store, uri, host)


def new_layer(conn: Any, store: Records, uri: str, host: str, frozen: FrozenDiskRef, tag: str) -> str:
    """A new empty layer on a frozen file (for a revert), recorded; returns its path."""
    top_vol = conn.storageVolLookupByPath(frozen.path)
    pool = top_vol.storagePoolLookupByVolume()
    capacity = int(top_vol.info()[1])
    name = _free_name(pool, f"{frozen.volume.partition('/')[2]}.{label_for(tag)}")
    address = f"{host}/volume/{pool.name()}/{name}"
    xml = layer_volume(name, capacity, frozen.path, frozen.format)
    layer = create_volume(
        store, uri, address, pool, name, lambda: pool.createXML(xml, 0),
        {"format": LAYER_FORMAT, "backing": frozen.path}, layer_of=frozen.volume_address, backing=frozen.path,
    )  # fmt: skip
    return str(layer.path())


@dataclass
class FrozenDiskRef:
    path: str
    format: str
    volume: str
    volume_address: str


def delete_layer_if_unused(conn: Any, store: Records, uri: str, path: str, keep: set[str]) -> bool:
    """Delete a layer file nobody builds on (no overlay backs onto it, no snapshot or freeze
    record holds it); `keep` are frozen files still referenced. Returns True if deleted."""
    import libvirt

    if path in keep or dependents(conn, [path]).get(path):
        return False
    for address, record in store.records(uri).items():
        if record.get("id") == path and record.get("layer_of"):
            try:
                conn.storageVolLookupByPath(path).delete(0)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
            store.forget(uri, address)
            return True
    return False
