"""A VM moving to another host (`migrate`, planned by `virtplan.plan.moves`).

The change belongs to the destination host; its operations reach the source host over the
source's own connection (`rt.run.peer`), and print themselves with `virsh -c SOURCE_URI`.

- Live (a running VM that stays running): the destination gets the VM's seed and console
  log, and its disk volumes are created first as the stack's own (intent, creation,
  confirmation: `virtplan.apply.claims`), at the size and over the base image they have;
  then libvirt migrates peer to peer (`VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER |
  VIR_MIGRATE_PERSIST_DEST | VIR_MIGRATE_UNDEFINE_SOURCE | VIR_MIGRATE_NON_SHARED_DISK`:
  `virsh migrate --live --p2p --persistent --undefinesource --copy-storage-all`), QEMU
  copying each disk (over NBD) while the guest runs. The source host's libvirtd connects
  to the destination's `Host.peer_uri`. (Copying only the top layers, `NON_SHARED_INC`,
  is refused by libvirt 9.0 for volumes made beforehand.)
- Cold (stopped, or a running VM that cannot move live): stopped gracefully on the source
  if running, each disk's file copied from host to host through this machine (libvirt
  volume streams: `vol-download`, `vol-upload`) into the volume created as above, the
  domain defined on the destination as rendered (same UUID, MACs and device addresses),
  started there if declared running, and undefined on the source.

Then, either way: the domain's owner mark names its new address, its record is on the
destination, and the source's copies of its disks (those the stack owns and no longer
declares there), seed and console log are deleted and their records forgotten.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from virtplan.apply.claims import confirm_volume, create_volume
from virtplan.apply.steps.base import CHUNK, Context, Operation, Runtime
from virtplan.apply.steps.records import Recorded
from virtplan.apply.steps.shell import SENSITIVE, file_name, q
from virtplan.apply.steps.vm import DefineDomain, DomainAutostart, StartDomain, graceful_stop, shutdown_timeout
from virtplan.apply.steps.vm_volumes import ClaimConsoleLog, WriteSeed
from virtplan.documents import fragments
from virtplan.documents.render import NAMESPACE, console_log_path
from virtplan.model import VM
from virtplan.plan.changes import ResourceChange

_DIGESTS = re.compile(r"""(\b(?:graphics-password|cloud-init)=["'])[0-9a-f]+(["'])""")


def _uri(ctx: Context, host: str) -> str:
    return ctx.stack.host(host).uri


# -- operations on the destination ----------------------------------------------------------------
@dataclass(frozen=True)
class CreateMovedVolume(Operation):
    """A disk's volume on the destination, made as the stack's own before anything is copied
    into it: the source's format and size, over its declared base image if it has one."""

    address: str
    key: str  # "pool/name"
    format: str
    capacity: int
    backing: str | None

    def document(self) -> str:
        name = self.key.partition("/")[2]
        if self.backing is None:
            return fragments.volume(name, self.capacity, self.format)
        return fragments.volume(name, self.capacity, self.format, backing=self.backing, backing_format="qcow2")

    def run(self, rt: Runtime) -> None:
        pool_name, _, name = self.key.partition("/")
        pool = rt.handle("pool", pool_name)
        expect = {"format": self.format, "backing": self.backing}
        vol = create_volume(rt.ctx.store, rt.ctx.host.uri, self.address, pool, name,
                            lambda: pool.createXML(self.document(), 0), expect)  # fmt: skip
        rt.remember("volume", self.key, vol)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.key.partition("/")
        line = f"virsh vol-create-as {q(pool)} {q(name)} {self.capacity} --format {self.format}"
        if self.backing:
            line += f" --backing-vol {q(self.backing)} --backing-vol-format qcow2"
        return [line, f"# (virtplan records {self.address} as owned by stack {ctx.stack.key!r} on this host)"]


@dataclass(frozen=True)
class CopyVolumeFile(Operation):
    """Copy a volume's file from the source host into the destination's volume of the same
    name, through this machine (libvirt volume streams), and record what it is now."""

    source: str
    address: str  # on the destination
    key: str

    def run(self, rt: Runtime) -> None:
        pool_name, _, name = self.key.partition("/")
        src_conn = rt.run.peer(self.source)
        src = src_conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
        dst = rt.handle("volume", self.key)
        download, upload = src_conn.newStream(0), rt.conn.newStream(0)
        src.download(download, 0, 0, 0)
        dst.upload(upload, 0, 0, 0)
        try:
            while True:
                data = download.recv(CHUNK)
                if not isinstance(data, bytes) or not data:
                    break
                view = memoryview(data)
                while view:
                    sent = upload.send(bytes(view))
                    view = view[sent:]
            download.finish()
            upload.finish()
        except BaseException:
            for stream in (download, upload):
                with contextlib.suppress(Exception):  # already finished or broken: nothing to release
                    stream.abort()
            raise
        from virtplan.hosts.pools import refresh_pool

        refresh_pool(rt.handle("pool", pool_name))
        fresh = rt.handle("pool", pool_name).storageVolLookupByName(name)
        confirm_volume(rt.ctx.store, rt.ctx.host.uri, self.address, fresh)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.key.partition("/")
        local = file_name("move", pool, name)
        return [
            f"virsh -c {q(_uri(ctx, self.source))} vol-download --pool {q(pool)} {q(name)} {q(local)}",
            f"virsh vol-upload --pool {q(pool)} {q(name)} {q(local)}",
            f"rm -f {q(local)}",
        ]


@dataclass(frozen=True)
class LiveMigrate(Operation):
    """libvirt's peer-to-peer live migration from the source host, disks copied by QEMU."""

    name: str
    source: str

    @staticmethod
    def flags() -> int:
        import libvirt

        return int(
            libvirt.VIR_MIGRATE_LIVE
            | libvirt.VIR_MIGRATE_PEER2PEER
            | libvirt.VIR_MIGRATE_PERSIST_DEST
            | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
            | libvirt.VIR_MIGRATE_NON_SHARED_DISK
        )

    def run(self, rt: Runtime) -> None:
        target = rt.ctx.stack.host(rt.ctx.host.name).peer_uri
        rt.run.peer(self.source).lookupByName(self.name).migrateToURI3(target, {}, self.flags())
        rt.remember("vm", self.name, rt.conn.lookupByName(self.name))

    def shell(self, ctx: Context) -> list[str]:
        target = ctx.stack.host(ctx.host.name).peer_uri
        return [
            f"virsh -c {q(_uri(ctx, self.source))} migrate --live --p2p --persistent --undefinesource "
            f"--copy-storage-all {q(self.name)} {q(target)}"
        ]


@dataclass(frozen=True)
class MarkMoved(Operation):
    """The domain's owner mark names its new address (its running state and definition)."""

    vm: VM

    def mark(self, ctx: Context) -> str:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(ctx.renderer.domain_xml(self.vm, reveal_secrets=False))
        owner = root.find(f"metadata/{{{NAMESPACE}}}owner")
        assert owner is not None
        return fragments.owner_mark(dict(owner.attrib))

    def run(self, rt: Runtime) -> None:
        import libvirt

        dom = rt.handle("vm", self.vm.name)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, self.mark(rt.ctx), "virtplan", NAMESPACE, flags)

    def shell(self, ctx: Context) -> list[str]:
        mark, masked = _DIGESTS.subn(rf"\1{SENSITIVE}\2", self.mark(ctx))
        note = (
            [f"# {SENSITIVE}: virtplan's digests of secrets; the next `virtplan apply` records them"] if masked else []
        )
        live = " --live" if self.vm.state == "running" else ""
        return [*note, f"virsh metadata {q(self.vm.name)} {q(NAMESPACE)} --key virtplan --set {q(mark)} --config{live}"]


# -- operations on the source -------------------------------------------------------------------
@dataclass(frozen=True)
class StopOnSource(Operation):
    name: str
    source: str
    timeout: float

    def run(self, rt: Runtime) -> None:
        graceful_stop(rt.run.peer(self.source).lookupByName(self.name), self.timeout)

    def shell(self, ctx: Context) -> list[str]:
        c = f"virsh -c {q(_uri(ctx, self.source))}"
        name = q(self.name)
        if self.timeout <= 0:
            return [f"{c} destroy {name}"]
        wait = f'until {c} domstate {name} | grep -qx "shut off"; do sleep 0.5; done'
        return [f"{c} shutdown {name} || true", f"timeout {self.timeout:g} sh -c {q(wait)} || {c} destroy {name}"]


@dataclass(frozen=True)
class UndefineOnSource(Operation):
    name: str
    source: str
    nvram: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if self.nvram:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        rt.run.peer(self.source).lookupByName(self.name).undefineFlags(flags)

    def shell(self, ctx: Context) -> list[str]:
        nvram = " --nvram" if self.nvram else ""
        return [
            f"virsh -c {q(_uri(ctx, self.source))} undefine {q(self.name)} --managed-save --snapshots-metadata{nvram}"
        ]


@dataclass(frozen=True)
class DeleteOnSource(Operation):
    """Delete what the VM left on the source (a disk it no longer needs there, its seed, its
    console log) and forget its record there. A console log libvirt learns of only on a pool
    refresh, and may be gone; so may a seed."""

    source: str
    address: str  # on the source
    log: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        from virtplan.hosts.pools import refresh_pool

        pool_name, _, name = self.address.split("/", 2)[2].partition("/")
        try:
            pool = rt.run.peer(self.source).storagePoolLookupByName(pool_name)
            if self.log:
                refresh_pool(pool)
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
            if exc.get_error_code() not in gone:
                raise
        rt.ctx.store.forget(_uri(rt.ctx, self.source), self.address)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.address.split("/", 2)[2].partition("/")
        c = f"virsh -c {q(_uri(ctx, self.source))}"
        if self.log:
            return [f"{c} pool-refresh {q(pool)}", f"{c} vol-delete --pool {q(pool)} {q(name)} 2>/dev/null || true"]
        return [f"{c} vol-delete --pool {q(pool)} {q(name)}"]


@dataclass(frozen=True)
class ForgetOnSource(Operation):
    """The VM's record on the source (its UUID and what was applied there) goes."""

    source: str
    address: str

    def run(self, rt: Runtime) -> None:
        rt.ctx.store.forget(_uri(rt.ctx, self.source), self.address)

    def shell(self, ctx: Context) -> list[str]:
        return []


# -- the step ---------------------------------------------------------------------------------
def migrate(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    vm: VM = ctx.resource(change)
    move: dict[str, Any] = change.move or {}
    source = str(move["source"])
    disks: list[dict[str, Any]] = list(move.get("disks", []))
    if move.get("stop"):
        timeout = shutdown_timeout(vm, None)
        yield StopOnSource(vm.name, source, timeout)  # `shutdown_timeout` of the VM as declared
    if vm.cloud_init is not None:
        yield WriteSeed(vm)
    if console_log_path(vm) is not None:
        yield ClaimConsoleLog(vm)
    for disk in disks:
        if disk["create"]:
            yield CreateMovedVolume(
                disk["dest_address"], disk["key"], disk["format"], disk["capacity"], disk["backing"]
            )
    if move.get("live"):
        yield LiveMigrate(vm.name, source)
    else:
        for disk in disks:
            yield CopyVolumeFile(source, disk["dest_address"], disk["key"])
        yield DefineDomain(vm, keep_from=_source_xml(ctx, change))
        if move.get("start"):
            yield StartDomain(vm.name)
        yield UndefineOnSource(vm.name, source, nvram=vm.firmware == "uefi")
    yield MarkMoved(vm)
    if vm.autostart:
        yield DomainAutostart(vm.name, True)
    yield Recorded(change)
    yield ForgetOnSource(source, f"{source}/vm/{vm.name}")
    logs = {a for a in move.get("cleanup", []) if a.endswith("/" + vm.console_log_name)}
    for address in move.get("cleanup", []):
        yield DeleteOnSource(source, address, log=address in logs)


def _source_xml(ctx: Context, change: ResourceChange) -> str | None:
    """The VM's definition on the source, as the plan observed it (to keep its device addresses)."""
    source = ctx.others.get(str((change.move or {}).get("source")))
    obj = source.get("vm", change.key) if source is not None else None
    return obj.xml if obj is not None else None
