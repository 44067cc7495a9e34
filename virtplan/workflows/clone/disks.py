"""The clone's disks on the hosts: freezing the source's disks, then overlays or copies.

The only part of cloning that touches libvirt before the clone's program is applied.
`frozen_states` freezes each source VM's disks (`virtplan.apply.layers`: the source keeps
running on new layers; the frozen files are never written again), all VMs of a host paused
for one common instant, or reads a disk-only snapshot's files; `fill_disks` then makes each
placeholder volume an overlay on a frozen file (linked), a copy made on the host (`--full`)
or, for a VM moved to another host, an image streamed to this machine and flattened.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.workflows.clone.design import Design, VMDesign
from virtplan.workflows.clone.options import CloneError, CloneOptions

if TYPE_CHECKING:
    from virtplan.engine import Engine, Observation

Progress = Callable[[str], None]


@dataclass
class Frozen:
    """A file holding a source disk's state at clone time; nothing writes it any more."""

    path: str
    format: str
    capacity: int


def frozen_states(engine: Engine, observation: Observation, d: Design, opts: CloneOptions,
                  say: Progress, clone_stack: str = "") -> dict[tuple[str, str], Frozen]:  # fmt: skip
    """(source VM name, source volume key) -> the file holding the state to clone; the freeze
    records name the clone's stack (`clone_stack`), which releases them."""
    out: dict[tuple[str, str], Frozen] = {}
    by_host: dict[str, list[VMDesign]] = {}
    for v in d.vms:
        assert v.source.host is not None
        by_host.setdefault(v.source.host.name, []).append(v)
    for host_name, vms in by_host.items():
        if opts.from_snapshot:
            out.update(_snapshot_states(engine, host_name, vms, opts.from_snapshot))
        else:
            out.update(_freeze_host(engine, host_name, vms, opts, say, clone_stack))
    return out


def _snapshot_states(
    engine: Engine, host_name: str, vms: list[VMDesign], snapshot: str
) -> dict[tuple[str, str], Frozen]:
    """The files of each VM's disk-only snapshot `snapshot` (SnapshotError if there is none)."""
    import libvirt

    from virtplan.apply.snapshots import SnapshotError, address_of
    from virtplan.hosts.chains import writable_disks

    conn = engine.connection(host_name)
    uri = engine.stack.host(host_name).uri
    out: dict[tuple[str, str], Frozen] = {}
    for v in vms:
        record = engine.store.get(uri, address_of(host_name, v.source.name, snapshot))
        if record is None:
            raise SnapshotError(f"VM {v.source.name!r} has no snapshot {snapshot!r} (see `virtplan snapshot list`)")
        if record.get("mode") != "disk":
            raise SnapshotError(f"snapshot {snapshot!r} of {v.source.name!r} is a memory snapshot; "
                                "clones start from disk-only snapshots")  # fmt: skip
        dom = conn.lookupByName(v.source.name)
        disks = {x.target: x for x in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
        for target, path in (record.get("disks") or {}).items():
            info = disks.get(target)
            if info is None or info.volume is None:
                continue
            fmt = (record.get("formats") or {}).get(target, "qcow2")
            out[(v.source.name, info.volume)] = Frozen(path, fmt, _capacity(conn, path))
    return out


def _freeze_host(engine: Engine, host_name: str, vms: list[VMDesign], opts: CloneOptions,
                 say: Progress, clone_stack: str = "") -> dict[tuple[str, str], Frozen]:  # fmt: skip
    """Freeze the disks of the VMs on one host (running ones paused together for one
    instant); a stopped VM copied in full needs no freezing: its files are not written."""
    import libvirt

    from virtplan.apply.layers import freeze, label_for
    from virtplan.hosts.chains import writable_disks

    conn = engine.connection(host_name)
    uri = engine.stack.host(host_name).uri
    out: dict[tuple[str, str], Frozen] = {}
    doms = [(v, conn.lookupByName(v.source.name)) for v in vms]
    need_freeze = [(v, dom) for v, dom in doms if v.disks and (not opts.full or dom.isActive())]
    paused = []
    try:
        if len(need_freeze) > 1:  # one instant for the whole environment
            for _, dom in need_freeze:
                if dom.isActive() and dom.info()[0] == 1:
                    dom.suspend()
                    paused.append(dom)
        label = label_for(f"clone-{opts.name}")

        def one(item: tuple[VMDesign, Any]) -> None:
            v, dom = item
            record = {"clone": opts.name, "clone_stack": clone_stack}
            result = freeze(conn, dom, engine.store, uri, host_name, label, record=record)
            for fd in result.disks.values():
                out[(v.source.name, fd.volume)] = Frozen(fd.path, fd.format, fd.capacity)

        with ThreadPoolExecutor(max_workers=4) as workers:  # a few VMs at once: qemu-img runs overlap
            list(workers.map(one, need_freeze))
    finally:
        for dom in paused:
            dom.resume()
    if need_freeze:
        say(f"froze the disks of {len(need_freeze)} VM(s) on {host_name}")
    for v, dom in doms:  # stopped VMs copied in full: their current files, nothing writes them
        if any(vv is v for vv, _ in need_freeze):
            continue
        for info in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
            if info.volume is not None:
                out[(v.source.name, info.volume)] = Frozen(info.top, info.format, _capacity(conn, info.top))
    return out


def _capacity(conn: Any, path: str) -> int:
    return int(conn.storageVolLookupByPath(path).info()[1])


def fill_disks(engine: Engine, d: Design, frozen: dict[tuple[str, str], Frozen], opts: CloneOptions,
               images: Path, say: Progress) -> str:  # fmt: skip
    """Turn the placeholder volumes into overlays, copies or uploads; returns the mode."""
    mode = "full" if opts.full else "linked"
    for v in d.vms:
        assert v.source.host is not None
        same_host = v.host == v.source.host.name
        for disk in v.disks:
            state = frozen.get((v.source.name, disk.source_volume))
            if state is None:
                raise CloneError(f"no frozen state found for disk {disk.source_volume} of {v.source.address}")
            vol = disk.volume
            vol.size = state.capacity
            if same_host and not opts.full:
                vol.format, vol.backing, vol.backing_format = "qcow2", state.path, state.format
            elif same_host:
                vol.copy_of = state.path
            else:
                vol.format = "qcow2"
                vol.source = str(_download_flat(engine.connection(v.source.host.name), state.path, images, vol.name))
                say(f"copied {disk.source_volume} to this machine for {v.host}")
                mode = "full" if opts.full else "linked, full copies across hosts"
        for name in ("kernel", "initrd"):
            src_vol = getattr(v.source, name, None)
            vol = getattr(v, name)
            if src_vol is None or vol is None:
                continue
            conn = engine.connection(v.source.host.name)
            key = f"{src_vol.pool.name}/{src_vol.name}"
            pool, _, vname = key.partition("/")
            src_obj = conn.storagePoolLookupByName(pool).storageVolLookupByName(vname)
            vol.size = int(src_obj.info()[1])
            if same_host:
                vol.copy_of = src_obj.path()
            else:
                vol.source = str(_download_flat(conn, src_obj.path(), images, vol.name, flatten=False))
    return mode


def _download_flat(conn: Any, path: str, images: Path, name: str, flatten: bool = True) -> Path:
    """Stream `path` and its backing chain from the host; flatten them into one local image."""
    from virtplan.documents.parse import parse_volume

    images.mkdir(parents=True, exist_ok=True)
    out = images / name
    with tempfile.TemporaryDirectory(dir=images) as tmp:
        chain: list[tuple[Path, str]] = []
        current: str | None = path
        while current:
            vol = conn.storageVolLookupByPath(current)
            spec = parse_volume(ET.fromstring(vol.XMLDesc(0)))
            local = Path(tmp) / f"layer{len(chain)}"
            _download(conn, vol, local)
            chain.append((local, spec["format"] or "raw"))
            current = spec["backing"] if flatten else None
        for (child, _), (parent, parent_fmt) in itertools.pairwise(chain):
            subprocess.run(["qemu-img", "rebase", "-u", "-b", str(parent), "-F", parent_fmt, str(child)],
                           check=True, capture_output=True)  # fmt: skip
        if not flatten:
            os.replace(chain[0][0], out)
            return out
        subprocess.run(["qemu-img", "convert", "-f", chain[0][1], "-O", "qcow2", str(chain[0][0]), str(out)],
                       check=True, capture_output=True)  # fmt: skip
    return out


def _download(conn: Any, vol: Any, local: Path) -> None:
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    with local.open("wb") as f:
        stream.recvAll(lambda _s, data, fh: fh.write(data), f)
    stream.finish()
