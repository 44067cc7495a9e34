"""Storage volumes: create (blank, an overlay, a full copy, or uploaded from a local
image), grow (through the running guest that uses it, if any), delete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from virtplan.apply.steps.base import CHUNK, Context, Operation, Runtime
from virtplan.apply.steps.records import Applied, EnsureAbsent, Forget, Intent, Reconfirmed, Recorded
from virtplan.apply.steps.shell import file_name, heredoc, q
from virtplan.documents import fragments
from virtplan.hosts.fetch import again_if_lost
from virtplan.hosts.observe import HostState
from virtplan.hosts.pools import refresh_pool
from virtplan.model import Volume
from virtplan.plan.changes import Reason, ResourceChange


# -- operations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class CreateVolume(Operation):
    """A blank volume or a copy-on-write overlay, as the stack declares it."""

    vol: Volume

    def run(self, rt: Runtime) -> None:
        assert self.vol.pool is not None
        pool = rt.handle("pool", self.vol.pool.name)
        rt.remember("volume", self.vol.key, pool.createXML(rt.ctx.renderer.volume_xml(self.vol), 0))

    def shell(self, ctx: Context) -> list[str]:
        assert self.vol.pool is not None
        v = ctx.renderer.volume_context(self.vol)
        line = f"virsh vol-create-as {q(self.vol.pool.name)} {q(self.vol.name)} {v.capacity} --format {v.format}"
        if v.backing_path:
            line += f" --backing-vol {q(v.backing_path)} --backing-vol-format {v.backing_format}"
        return [line]


@dataclass(frozen=True)
class CopyVolume(Operation):
    """A full copy of the volume at `vol.copy_of`, made by libvirt on the host (a chain is
    flattened)."""

    vol: Volume

    def run(self, rt: Runtime) -> None:
        assert self.vol.pool is not None and self.vol.copy_of is not None
        pool = rt.handle("pool", self.vol.pool.name)
        source = rt.conn.storageVolLookupByPath(self.vol.copy_of)
        rt.remember("volume", self.vol.key, pool.createXMLFrom(rt.ctx.renderer.volume_xml(self.vol), source, 0))

    def shell(self, ctx: Context) -> list[str]:
        assert self.vol.pool is not None and self.vol.copy_of is not None
        path = file_name("volume", self.vol.pool.name, self.vol.name) + ".xml"
        return [heredoc(path, ctx.renderer.volume_xml(self.vol)),
                f"virsh vol-create-from {q(self.vol.pool.name)} {q(path)} {q(self.vol.copy_of)}"]  # fmt: skip


@dataclass(frozen=True)
class CopyRenamed(Operation):
    """A renamed volume's copy under its new name, in the same pool, made by libvirt on the
    host (libvirt cannot rename a volume)."""

    vol: Volume
    old_key: str  # "pool/old-name"

    def run(self, rt: Runtime) -> None:
        assert self.vol.pool is not None
        pool = rt.handle("pool", self.vol.pool.name)
        source = rt.handle("volume", self.old_key)
        rt.remember("volume", self.vol.key, pool.createXMLFrom(rt.ctx.renderer.volume_xml(self.vol), source, 0))

    def shell(self, ctx: Context) -> list[str]:
        assert self.vol.pool is not None
        path = file_name("volume", self.vol.pool.name, self.vol.name) + ".xml"
        old = self.old_key.partition("/")[2]
        return [heredoc(path, ctx.renderer.volume_xml(self.vol)),
                f"virsh vol-create-from {q(self.vol.pool.name)} {q(path)} {q(old)}"]  # fmt: skip


@dataclass(frozen=True)
class FetchImage(Operation):
    """The image at the volume's URL, in the local cache and verified: downloaded, resumed
    or already there (the CLI fetches before applying, with a progress bar)."""

    vol: Volume

    def run(self, rt: Runtime) -> None:
        from virtplan.hosts.downloads import DownloadError, fetch
        from virtplan.model.images import image_format

        assert self.vol.image is not None
        path, _ = fetch(self.vol.image)
        if image_format(path) != self.vol.format:
            raise DownloadError(f"{self.vol.address}: the image from {self.vol.source} is {image_format(path)}, "
                                f"not {self.vol.format}; say format={image_format(path)!r}")  # fmt: skip

    def shell(self, ctx: Context) -> list[str]:
        assert self.vol.image is not None and self.vol.pool is not None
        image = self.vol.image
        local = file_name("image", self.vol.pool.name, self.vol.name)
        return [f"curl -fL -C - -o {q(local)} {q(image.url)}  # resumable",
                f"echo {q(f'{image.digest}  {local}')} | {image.algo}sum -c"]  # fmt: skip


def local_image(vol: Volume) -> Path:
    """The local file a volume's image is uploaded from: its source, or for a URL the cached download."""
    from virtplan.model.images import is_url

    if is_url(vol.source):
        from virtplan.hosts.downloads import cached

        assert vol.checksum is not None
        path = cached(*vol.checksum)
        assert path is not None, "FetchImage runs first"
        return path
    assert vol.source is not None
    return Path(vol.source)


@dataclass(frozen=True)
class UploadVolume(Operation):
    """A volume holding a local image file, streamed through libvirt (remote hosts too)."""

    vol: Volume

    def run(self, rt: Runtime) -> None:
        assert self.vol.pool is not None and self.vol.source is not None
        path = local_image(self.vol)
        size = path.stat().st_size
        pool = rt.handle("pool", self.vol.pool.name)
        obj = rt.remember(
            "volume", self.vol.key, pool.createXML(fragments.volume(self.vol.name, size, self.vol.format), 0)
        )
        stream = rt.conn.newStream(0)
        obj.upload(stream, 0, size, 0)
        with path.open("rb") as f:
            stream.sendAll(lambda _s, n, fh: fh.read(min(n, CHUNK)), f)
        stream.finish()
        refresh_pool(pool)

    def shell(self, ctx: Context) -> list[str]:
        from virtplan.model.images import is_url

        assert self.vol.pool is not None and self.vol.source is not None
        pool, name = q(self.vol.pool.name), q(self.vol.name)
        if is_url(self.vol.source):  # downloaded beside the script by FetchImage's commands
            assert self.vol.image is not None
            source = file_name("image", self.vol.pool.name, self.vol.name)
            size = self.vol.image.length or 0
            return [f"virsh vol-create-as {pool} {name} {size} --format {self.vol.format}",
                    f"virsh vol-upload --pool {pool} {name} {q(source)}"]  # fmt: skip
        source = os.path.abspath(self.vol.source)
        size = Path(source).stat().st_size
        return [f"virsh vol-create-as {pool} {name} {size} --format {self.vol.format}",
                f"virsh vol-upload --pool {pool} {name} {q(source)}"]  # fmt: skip


@dataclass(frozen=True)
class ResizeVolume(Operation):
    """Grow a volume that no running guest uses."""

    key: str  # "pool/name"
    capacity: int

    def run(self, rt: Runtime) -> None:
        rt.handle("volume", self.key).resize(self.capacity, 0)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.key.partition("/")
        return [f"virsh vol-resize --pool {q(pool)} {q(name)} {self.capacity}"]


@dataclass(frozen=True)
class BlockResize(Operation):
    """Grow a volume through the running guest that uses it (the guest sees the new size)."""

    domain: str
    target: str
    capacity: int

    def run(self, rt: Runtime) -> None:
        import libvirt

        rt.handle("vm", self.domain).blockResize(self.target, self.capacity, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh blockresize {q(self.domain)} {q(self.target)} {self.capacity}B"]


@dataclass(frozen=True)
class DeleteVolume(Operation):
    """Delete a volume; the run form checks right before that nothing backs onto it (the
    plan was refused if anything did; see virtplan.apply.protection)."""

    address: str
    key: str

    def run(self, rt: Runtime) -> None:
        import libvirt

        from virtplan.apply.protection import refuse_if_backing

        try:
            vol = again_if_lost(lambda: rt.handle("volume", self.key))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return  # gone already (a snapshot's layer, merged back when the plan deleted the snapshot)
            raise
        refuse_if_backing(rt.run, self.address, vol.path())  # overlays of other stacks (clones)
        vol.delete(0)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.key.partition("/")
        return [f"virsh vol-delete --pool {q(pool)} {q(name)}"]


# -- steps ------------------------------------------------------------------------------------
def create(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    vol: Volume = ctx.resource(change)
    backing = ctx.renderer.volume_context(vol).backing_path
    if vol.image is not None:  # a URL source: downloaded and verified before anything is created
        yield FetchImage(vol)
    yield Intent(change.address, "volume", {"format": vol.format, "backing": backing}, upload=vol.source is not None,
                 image=vol.image.as_record() if vol.image is not None else None)  # fmt: skip
    yield EnsureAbsent(change.address, change.key)
    if vol.source is not None:
        yield UploadVolume(vol)
    elif vol.copy_of is not None:
        yield CopyVolume(vol)
    else:
        yield CreateVolume(vol)
    yield Recorded(change)


def rename(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    """A renamed volume (renamed_from): copied to its new name (recorded like any create),
    then the old one deleted. The plan refused it under a running VM."""
    vol: Volume = ctx.resource(change)
    assert change.moved_from is not None
    yield Intent(change.address, "volume", {"format": vol.format, "backing": None})
    yield EnsureAbsent(change.address, change.key)
    yield CopyRenamed(vol, change.moved_from)
    yield Recorded(change)
    old_address = f"{ctx.host.name}/volume/{change.moved_from}"
    yield DeleteVolume(old_address, change.moved_from)
    yield Forget(old_address)


def update(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    if change.reason == Reason.RENAMED:
        yield from rename(change, ctx)
        return
    for fc in change.changes:
        if fc.field != "capacity":
            continue
        user = running_user(ctx.host, change.key)
        if user is not None:
            yield BlockResize(user[0], user[1], fc.after)
        else:
            yield ResizeVolume(change.key, fc.after)
        yield Reconfirmed(change.address, change.key)  # its new size is still provably ours
    yield Applied(change)


def replace(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from delete(change, ctx)
    yield from create(change, ctx)


def delete(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield DeleteVolume(change.address, change.key)
    yield Forget(change.address)


def running_user(host: HostState, key: str) -> tuple[str, str] | None:
    """A running domain (as observed) with volume `key` attached, and the disk's target."""
    import xml.etree.ElementTree as ET

    for obj in host.of_kind("vm"):
        if obj.spec.get("state") != "running":
            continue
        for disk in ET.fromstring(obj.xml).iterfind("devices/disk"):
            src, tgt = disk.find("source"), disk.find("target")
            if src is not None and tgt is not None and f"{src.get('pool')}/{src.get('volume')}" == key:
                return obj.key, tgt.get("dev", "")
    return None
