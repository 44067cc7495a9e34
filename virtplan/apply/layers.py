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
    unlayer_disk,
)
from virtplan.hosts.chains import LayerError, backing_map, chain_of, dependents, writable_disks
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
        record = records.get(f"{host}/volume/{key}") or {}
        chain = record.get("layers")
        if chain:
            layer_disk(disk, chain, key, _volume_format(conn, key))
        elif "layers" in record and disk.get("type") == "file":  # its layers were merged back
            unlayer_disk(disk, key, _volume_format(conn, key))
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


# -- merging layers back ------------------------------------------------------------------------
#: Seconds a block commit may take before virtplan gives up on it (the job goes on in QEMU;
#: the next compaction finds the chain as it is then).
COMMIT_TIMEOUT = 600.0


@dataclass
class Compacted:
    """What a compaction did: layers merged back (their files deleted), and notes on what
    it left for later."""

    merged: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pins(conn: Any, store: Records, uri: str) -> tuple[set[str], set[str], dict[str, list[str]]]:
    """Frozen files that must stay as they are (hard: a clone being made holds them, a memory
    snapshot lives in them; or others back onto them), files a disk-only snapshot holds
    (soft: their content may move into the file below, the snapshot's record follows), and
    who backs onto what (path -> paths)."""
    hard: set[str] = set()
    soft: set[str] = set()
    for record in store.records(uri).values():
        if record.get("kind") == "freeze":
            hard |= set((record.get("disks") or {}).values())
        elif record.get("kind") == "snapshot":
            if record.get("mode") == "memory":
                hard |= set((record.get("tops") or {}).values())
            else:
                soft |= set((record.get("disks") or {}).values())
    return hard, soft, backing_map(conn)


def compact_host(conn: Any, store: Records, uri: str, host: str) -> Compacted:
    """Merge back every layer of this stack's disks on `host` that nothing builds on any more
    (see `compact_vm`), VM after VM."""
    import libvirt

    tops = {
        (r.get("layers") or [None])[0]: a for a, r in store.records(uri).items() if r.get("layers")
    }  # the file each layered volume's VM writes -> that volume's address
    done = Compacted()
    if not tops:
        return done
    from virtplan.hosts.chains import disk_files

    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
        if disk_files(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)) & set(tops):
            result = compact_vm(conn, dom, store, uri, host)
            done.merged += result.merged
            done.notes += result.notes
    return done


def compact_vm(conn: Any, dom: Any, store: Records, uri: str, host: str) -> Compacted:
    """Merge back the layers of `dom`'s disks that nothing builds on any more.

    A disk's chain is its declared volume F0 with layers F1..Fk above it (Fk is written by
    the VM). Fi+1 is committed into Fi when nothing else needs Fi as it is: no clone backs
    onto it, no snapshot or clone being made holds it; and Fi+1 may go: nothing else backs
    onto it and no memory snapshot lives in it (a disk-only snapshot holding Fi+1 moves to
    Fi, which then holds the same content). Fi+1's file is then deleted. The guest sees the
    same disk throughout: a running VM is committed live (QEMU's block commit, pivoting to Fi
    when Fi+1 was its active layer); a stopped one is started paused for the commits (its
    CPUs never run) and stopped again."""
    import libvirt

    done = Compacted()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    work = []  # (target, volume address, files bottom first)
    for d in writable_disks(conn, xml):
        if d.volume is None:
            continue
        address = f"{host}/volume/{d.volume}"
        chain = chain_of(store, uri, address)
        if chain:
            work.append((d.target, address, [_path_of(conn, d.volume), *reversed(chain)]))
    if not work or not any(_next_merge(files, *pins(conn, store, uri)) is not None for _, _, files in work):
        return done
    started = False
    if not dom.isActive():
        try:  # the commits need QEMU: paused, the guest never runs
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            started = True
        except libvirt.libvirtError as exc:
            done.notes.append(f"{dom.name()}: its layers stay until it can start ({exc.get_error_message()})")
            return done
    try:
        for target, address, files in work:
            while True:
                hard, soft, users = pins(conn, store, uri)
                i = _next_merge(files, hard, soft, users)
                if i is None:
                    break
                lower, upper = files[i], files[i + 1]
                _commit(dom, target, lower, upper, active=i + 1 == len(files) - 1)
                files = files[: i + 1] + files[i + 2 :]
                _after_merge(conn, store, uri, host, address, target, lower, upper, files, soft)
                done.merged.append(upper)
    finally:
        if started:
            with contextlib.suppress(libvirt.libvirtError):
                dom.destroy()
    _redefine_with_chains(conn, dom, store, uri, host)
    return done


def _next_merge(files: list[str], hard: set[str], soft: set[str], users: dict[str, list[str]]) -> int | None:
    """The lowest i where files[i+1] can be committed into files[i] (files bottom first)."""
    for i in range(len(files) - 1):
        lower, upper = files[i], files[i + 1]
        if lower in hard or lower in soft or set(users.get(lower, [])) - {upper}:
            continue
        above = files[i + 2] if i + 2 < len(files) else None
        if upper in hard or set(users.get(upper, [])) - ({above} if above else set()):
            continue
        return i
    return None


def _commit(dom: Any, target: str, lower: str, upper: str, active: bool) -> None:
    """Commit `upper` into `lower` on the running domain; when `upper` is the active layer,
    pivot the disk to `lower`."""
    import time

    import libvirt

    flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if active else 0
    dom.blockCommit(target, lower, upper, 0, flags)
    deadline = time.monotonic() + COMMIT_TIMEOUT
    while time.monotonic() < deadline:
        info = dom.blockJobInfo(target, 0)
        if not info:  # an intermediate commit ends by itself
            if active:
                raise LayerError(f"the commit of {upper} into {lower} ended without pivoting")
            return
        if active and info.get("end", 0) and info.get("cur") == info.get("end"):
            try:
                dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                return
            except libvirt.libvirtError:  # not ready to pivot yet
                pass
        time.sleep(0.05)
    with contextlib.suppress(libvirt.libvirtError):
        dom.blockJobAbort(target, 0)
    raise LayerError(f"committing {upper} into {lower} took more than {COMMIT_TIMEOUT:g} s; it was cancelled")


def _after_merge(conn: Any, store: Records, uri: str, host: str, address: str, target: str, lower: str,
                 upper: str, files: list[str], soft: set[str]) -> None:  # fmt: skip
    """Records follow a merge: the chain, snapshots that held `upper` (now `lower`), and
    `upper`'s layer record and file, which go."""
    import libvirt

    updates: dict[str, dict[str, Any]] = {address: {"layers": list(reversed(files[1:]))}}
    if upper in soft:
        lower_format = _format_of(conn, lower)
        for snap, record in store.records(uri).items():
            disks = dict(record.get("disks") or {})
            if record.get("kind") == "snapshot" and upper in disks.values():
                moved = {t: (lower if p == upper else p) for t, p in disks.items()}
                formats = dict(record.get("formats") or {})
                formats.update({t: lower_format for t, p in disks.items() if p == upper})
                updates[snap] = {"disks": moved, "formats": formats}
    store.put_many(uri, updates)
    try:
        conn.storageVolLookupByPath(upper).delete(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            raise
    for layer, record in store.records(uri).items():
        if record.get("id") == upper and record.get("layer_of"):
            store.forget(uri, layer)
    at = files.index(lower)
    if at + 1 < len(files):  # the layer above now backs onto `lower`: its identity follows
        from virtplan.apply.claims import confirm_volume
        from virtplan.hosts.pools import refresh_pool

        above = conn.storageVolLookupByPath(files[at + 1])
        with contextlib.suppress(libvirt.libvirtError):
            refresh_pool(above.storagePoolLookupByVolume())  # libvirt reads the new backing file
        for layer, record in store.records(uri).items():
            if record.get("id") == files[at + 1] and record.get("layer_of"):
                confirm_volume(store, uri, layer, above)
                store.put(uri, layer, backing=lower)


def _path_of(conn: Any, key: str) -> str:
    pool, _, name = key.partition("/")
    return str(conn.storagePoolLookupByName(pool).storageVolLookupByName(name).path())


def _format_of(conn: Any, path: str) -> str:
    fmt = ET.fromstring(conn.storageVolLookupByPath(path).XMLDesc(0)).find("target/format")
    return fmt.get("type", "raw") if fmt is not None else "raw"


def release_freezes(store: Records, uri: str, clone_stack: str) -> int:
    """Forget the freeze records kept for clone `clone_stack` (its overlays protect the
    frozen files while they exist; once they are gone nothing needs them frozen)."""
    gone = [
        a for a, r in store.records(uri).items() if r.get("kind") == "freeze" and r.get("clone_stack") == clone_stack
    ]
    for address in gone:
        store.forget(uri, address)
    return len(gone)
