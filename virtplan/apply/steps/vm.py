"""VMs: write the cloud-init seed, define (keeping device addresses and copy-on-write
layers), start; change memory, vCPUs and the description live, hot-plug appended disks
and NICs; restart gracefully; stop gracefully and undefine, with the seed and console log."""

from __future__ import annotations

import contextlib
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.records import Forget, ForgetIdentity, Recorded
from virtplan.apply.steps.shell import SENSITIVE, file_name, heredoc, q
from virtplan.documents import fragments
from virtplan.documents.merge import keep_device_addresses
from virtplan.documents.render import console_log_path
from virtplan.documents.seed import build_seed_iso
from virtplan.hosts.observe import ObservedObject
from virtplan.hosts.pools import refresh_pool
from virtplan.model import VM, Resource
from virtplan.plan.changes import ResourceChange
from virtplan.plan.policy import hot_fields, plugged_fields, redefines

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
CHUNK = 1024 * 1024
_SEED_SECRET = re.compile(r"\(sensitive:[0-9a-f]+\)")
_DIGEST_ATTR = {
    name: re.compile(rf"""(\b{name}=["'])[0-9a-f]+(["'])""") for name in ("graphics-password", "cloud-init")
}


# -- defining and starting --------------------------------------------------------------------
@dataclass(frozen=True)
class DefineDomain(Operation):
    """Define the VM as rendered; `keep_from` (the current definition) keeps its device
    addresses; disks on frozen volumes point at their top layer (virtplan.apply.layers).
    The shell form masks secrets: "(sensitive)" stands where the password goes."""

    vm: VM
    keep_from: str | None = None

    def document(self, ctx: Context, reveal_secrets: bool) -> str:
        from virtplan.apply.layers import apply_layers

        xml = ctx.renderer.domain_xml(self.vm, reveal_secrets=reveal_secrets)
        if self.keep_from is not None:
            xml = keep_device_addresses(xml, self.keep_from)
        return apply_layers(xml, ctx.store, ctx.host.uri, ctx.host.name)

    def run(self, rt: Runtime) -> None:
        rt.remember("vm", self.vm.name, rt.conn.defineXML(self.document(rt.ctx, reveal_secrets=True)))

    def shell(self, ctx: Context) -> list[str]:
        xml = self.document(ctx, reveal_secrets=False)
        path = file_name("domain", self.vm.name) + ".xml"
        out, masked = [], []
        if self.vm.graphics is not None and self.vm.graphics.password is not None:
            out.append(f"# {SENSITIVE} in {path} stands for the console password: put the real one there")
            xml, n = _DIGEST_ATTR["graphics-password"].subn(rf"\1{SENSITIVE}\2", xml)
            masked += ["graphics-password"] if n else []
        if self.vm.cloud_init is not None and self.vm.cloud_init.password is not None:
            xml, n = _DIGEST_ATTR["cloud-init"].subn(rf"\1{SENSITIVE}\2", xml)
            masked += ["cloud-init"] if n else []
        if masked:
            out.append(
                f"# virtplan's digests of secrets ({', '.join(masked)} in <metadata>) are masked as well: "
                "the next `virtplan apply` records them again"
            )
        return [*out, heredoc(path, xml), f"virsh define {q(path)}"]


@dataclass(frozen=True)
class StartDomain(Operation):
    name: str

    def run(self, rt: Runtime) -> None:
        rt.handle("vm", self.name).create()

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh start {q(self.name)}"]


@dataclass(frozen=True)
class DomainAutostart(Operation):
    name: str
    on: bool

    def run(self, rt: Runtime) -> None:
        rt.handle("vm", self.name).setAutostart(1 if self.on else 0)

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh autostart {'' if self.on else '--disable '}{q(self.name)}"]


@dataclass(frozen=True)
class GracefulStop(Operation):
    """ACPI shutdown, then a forced stop if the guest still runs after `timeout` seconds
    (at once with 0). Both forms wait on the guest's state, so a guest that is already off
    is simply left off."""

    name: str
    timeout: float

    def run(self, rt: Runtime) -> None:
        graceful_stop(rt.handle("vm", self.name), self.timeout)

    def shell(self, ctx: Context) -> list[str]:
        name = q(self.name)
        if self.timeout <= 0:
            return [f"virsh destroy {name}"]
        wait = f'until virsh domstate {name} | grep -qx "shut off"; do sleep 0.5; done'
        return [f"virsh shutdown {name} || true", f"timeout {self.timeout:g} sh -c {q(wait)} || virsh destroy {name}"]


def graceful_stop(dom: Any, timeout: float) -> None:
    """ACPI shutdown, then a forced stop if the guest is still running after `timeout` s."""
    import libvirt

    if timeout > 0:
        # No ACPI answer possible (e.g. still booting): fall through to destroy.
        with contextlib.suppress(libvirt.libvirtError):
            dom.shutdown()
        deadline = time.monotonic() + timeout
        delay = 0.05
        while time.monotonic() < deadline:
            if not dom.isActive():
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
    if dom.isActive():
        dom.destroy()


# -- live changes -----------------------------------------------------------------------------
@dataclass(frozen=True)
class _HotField(Operation):
    """A hot VM field set on the running guest (`live`) and/or in its definition (`config`)."""

    name: str
    value: Any
    live: bool
    config: bool

    def flags(self) -> int:
        import libvirt

        live = libvirt.VIR_DOMAIN_AFFECT_LIVE if self.live else 0
        return live | (libvirt.VIR_DOMAIN_AFFECT_CONFIG if self.config else 0)

    def options(self) -> str:
        return " ".join(f for f, on in (("--live", self.live), ("--config", self.config)) if on)


class SetMemory(_HotField):
    """Current memory (bytes), within the maximum."""

    def run(self, rt: Runtime) -> None:
        rt.handle("vm", self.name).setMemoryFlags(self.value // 1024, self.flags())

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh setmem {q(self.name)} {self.value // 1024}KiB {self.options()}"]


class SetVcpus(_HotField):
    """The number of vCPUs, within the maximum."""

    def run(self, rt: Runtime) -> None:
        rt.handle("vm", self.name).setVcpusFlags(self.value, self.flags())

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh setvcpus {q(self.name)} {self.value} {self.options()}"]


class SetDescription(_HotField):
    """The description ("" removes it)."""

    def run(self, rt: Runtime) -> None:
        import libvirt

        meta = libvirt.VIR_DOMAIN_METADATA_DESCRIPTION
        rt.handle("vm", self.name).setMetadata(meta, self.value or None, None, None, self.flags())

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh desc {q(self.name)} {self.options()} --new-desc {q(self.value or '')}"]


#: The operation that sets each hot field (see `virtplan.plan.policy.LIVE`).
HOT: dict[str, type[_HotField]] = {"memory": SetMemory, "vcpus": SetVcpus, "description": SetDescription}


@dataclass(frozen=True)
class AttachDevice(Operation):
    """Hot-plug a disk (by its volume "pool/name") or NIC (by MAC) into the running guest.
    The run form attaches the device as libvirt defined it (with the address it assigned
    in the definition just written); the shell form attaches it as rendered."""

    vm: VM
    tag: str  # "disk" | "interface"
    match: str
    rendered: str  # the domain document as rendered, device addresses kept

    def run(self, rt: Runtime) -> None:
        import libvirt

        dom = rt.handle("vm", self.vm.name)
        defined = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        dom.attachDeviceFlags(ET.tostring(self.device(defined), encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def shell(self, ctx: Context) -> list[str]:
        path = file_name("disk" if self.tag == "disk" else "nic", self.vm.name, self.match) + ".xml"
        return [heredoc(path, ET.tostring(self.device(self.rendered), encoding="unicode")),
                f"virsh attach-device {q(self.vm.name)} {q(path)} --live"]  # fmt: skip

    def device(self, domain_xml: str) -> ET.Element:
        for dev in ET.fromstring(domain_xml).iterfind(f"devices/{self.tag}"):
            if self.tag == "disk":
                src = dev.find("source")
                if src is not None and f"{src.get('pool')}/{src.get('volume')}" == self.match:
                    return dev
            else:
                mac = dev.find("mac")
                if mac is not None and mac.get("address", "").lower() == self.match:
                    return dev
        raise KeyError(f"{self.tag} {self.match}")


# -- seed and console log ---------------------------------------------------------------------
@dataclass(frozen=True)
class WriteSeed(Operation):
    """(Re)write the VM's NoCloud seed volume, recorded before it is created. The run form
    builds the ISO in memory; the shell form writes the files and runs genisoimage."""

    vm: VM

    def address(self, ctx: Context) -> str:
        assert self.vm.seed_pool is not None
        return f"{ctx.host.name}/volume/{self.vm.seed_pool.name}/{self.vm.seed_volume_name}"

    def run(self, rt: Runtime) -> None:
        import libvirt

        assert self.vm.seed_pool is not None
        store, uri, address = rt.ctx.store, rt.ctx.host.uri, self.address(rt.ctx)
        data = build_seed_iso(rt.ctx.renderer.seed_files(self.vm))
        pool = rt.handle("pool", self.vm.seed_pool.name)
        store.put(uri, address, kind="volume", pending=True, seed_of=self.vm.address)
        try:
            pool.storageVolLookupByName(self.vm.seed_volume_name).delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        vol = pool.createXML(fragments.volume(self.vm.seed_volume_name, len(data), "raw"), 0)
        stream = rt.conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += stream.send(bytes(view[offset : offset + CHUNK]))
        stream.finish()
        store.put(uri, address, id=vol.path(), pending=False, seed_of=self.vm.address)

    def shell(self, ctx: Context) -> list[str]:
        vm = self.vm
        assert vm.seed_pool is not None
        folder = file_name("seed", vm.name)
        iso = vm.seed_volume_name
        files = ctx.renderer.seed_files(vm, reveal_secrets=False)
        out = [f"mkdir -p {q(folder)}"]
        if vm.cloud_init is not None and vm.cloud_init.password is not None:
            out.append(f"# {SENSITIVE} in {folder}/user-data stands for the password: put the real one there")
        for name, content in sorted(files.items()):
            out.append(heredoc(f"{folder}/{name}", _SEED_SECRET.sub(SENSITIVE, content)))
        paths = " ".join(q(f"{folder}/{n}") for n in sorted(files))
        pool = q(vm.seed_pool.name)
        return [
            *out,
            f"genisoimage -quiet -output {q(folder + '.iso')} -volid cidata -joliet -rock {paths}",
            f"virsh vol-delete --pool {pool} {q(iso)} 2>/dev/null || true  # an old seed, if any",
            f'virsh vol-create-as {pool} {q(iso)} "$(stat -c %s {q(folder + ".iso")})" --format raw',
            f"virsh vol-upload --pool {pool} {q(iso)} {q(folder + '.iso')}",
        ]


@dataclass(frozen=True)
class ClaimConsoleLog(Operation):
    """Record the console log file (written by libvirt's virtlogd) as the VM's own."""

    vm: VM

    def run(self, rt: Runtime) -> None:
        assert self.vm.seed_pool is not None
        address = f"{rt.ctx.host.name}/volume/{self.vm.seed_pool.name}/{self.vm.console_log_name}"
        rt.ctx.store.put(rt.ctx.host.uri, address, kind="volume", pending=True, log_of=self.vm.address)

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class DeleteVmVolume(Operation):
    """Delete a volume a VM owns besides its disks (its seed or console log) and forget it.
    A console log is known to libvirt only after a pool refresh and may not exist; the run
    form also tolerates a seed already gone."""

    address: str
    log: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        pool_name, _, name = self.address.split("/", 2)[2].partition("/")
        try:
            pool = rt.handle("pool", pool_name)
            if self.log:
                refresh_pool(pool)  # libvirt learns of files virtlogd created only on refresh
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
            if exc.get_error_code() not in (*gone, libvirt.VIR_ERR_OPERATION_INVALID):
                raise
        rt.ctx.store.forget(rt.ctx.host.uri, self.address)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.address.split("/", 2)[2].partition("/")
        if self.log:
            return [f"virsh pool-refresh {q(pool)}",
                    f"virsh vol-delete --pool {q(pool)} {q(name)} 2>/dev/null || true  # console log"]  # fmt: skip
        return [f"virsh vol-delete --pool {q(pool)} {q(name)}"]


# -- undefining -------------------------------------------------------------------------------
@dataclass(frozen=True)
class UndefineDomain(Operation):
    """Undefine a stopped domain with its managed save image and libvirt's snapshot
    metadata (virtplan's snapshots are its own records), and its NVRAM for UEFI."""

    name: str
    nvram: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if self.nvram:
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        rt.handle("vm", self.name).undefineFlags(flags)

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh undefine {q(self.name)} --managed-save --snapshots-metadata{' --nvram' if self.nvram else ''}"]


@dataclass(frozen=True)
class ForgetSnapshots(Operation):
    """Drop the snapshot and freeze records of a deleted VM (their layers go with the volumes)."""

    vm_address: str

    def run(self, rt: Runtime) -> None:
        for address, record in rt.ctx.store.records(rt.ctx.host.uri).items():
            if record.get("kind") in ("snapshot", "freeze") and record.get("vm") == self.vm_address:
                rt.ctx.store.forget(rt.ctx.host.uri, address)

    def shell(self, ctx: Context) -> list[str]:
        return []


def shutdown_timeout(declared: Resource | None, observed: ObservedObject | None) -> float:
    """The VM's declared timeout; for a VM no longer declared, the one it was created with."""
    if isinstance(declared, VM):
        return float(declared.shutdown_timeout)
    if observed is not None and observed.owner is not None:
        try:
            return float(observed.owner.attrs.get("shutdown-timeout", DEFAULT_SHUTDOWN_TIMEOUT))
        except ValueError:
            pass
    return DEFAULT_SHUTDOWN_TIMEOUT


# -- steps ------------------------------------------------------------------------------------
def create(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    vm: VM = ctx.resource(change)
    if vm.cloud_init is not None:
        yield WriteSeed(vm)
    if console_log_path(vm) is not None:
        yield ClaimConsoleLog(vm)
    yield DefineDomain(vm)
    if vm.autostart:
        yield DomainAutostart(vm.name, True)
    if vm.state == "running":
        yield StartDomain(vm.name)
    yield Recorded(change)


def update(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from _change(change, ctx, restart=False)


def restart(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from _change(change, ctx, restart=True)


def _change(change: ResourceChange, ctx: Context, restart: bool) -> Iterator[Operation]:
    """Only hot and runtime fields: set each in the definition and, on a running guest,
    the guest. Otherwise a new definition (seed rewritten if it changed), then on a running
    guest either the hot fields and hot-plugs (update) or a graceful restart."""
    vm: VM = ctx.resource(change)
    obj = ctx.observed(change)
    assert obj is not None
    fields = {fc.field: fc for fc in change.changes}
    running = obj.spec.get("state") == "running"
    if not redefines("vm", fields):
        for name in hot_fields("vm", fields):
            yield HOT[name](vm.name, fields[name].after, live=running, config=True)
    else:
        if "cloud_init" in fields and vm.cloud_init is not None:
            yield WriteSeed(vm)
        if "console_log" in fields and console_log_path(vm) is not None:
            yield ClaimConsoleLog(vm)
        define = DefineDomain(vm, keep_from=obj.xml)
        yield define
        if running and not restart:
            for name in hot_fields("vm", fields):
                yield HOT[name](vm.name, fields[name].after, live=True, config=False)
            rendered = define.document(ctx, reveal_secrets=False) if plugged_fields("vm", fields) else ""
            for name in plugged_fields("vm", fields):
                tag, key = ("disk", "volume") if name == "disks" else ("interface", "mac")
                for item in (fields[name].after or [])[len(fields[name].before or []) :]:
                    yield AttachDevice(vm, tag, item[key], rendered)
        if restart and running:
            yield GracefulStop(vm.name, float(vm.shutdown_timeout))
            yield StartDomain(vm.name)
    if "autostart" in fields:
        yield DomainAutostart(vm.name, vm.autostart)
    if "state" in fields:
        if vm.state == "running" and not running:
            yield StartDomain(vm.name)
        elif vm.state == "stopped" and running:
            yield GracefulStop(vm.name, float(vm.shutdown_timeout))
    yield Recorded(change)


def replace(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from delete(change, ctx, keep_seed=True)
    yield ForgetIdentity(change.address)
    yield from create(change, ctx)


def delete(change: ResourceChange, ctx: Context, keep_seed: bool = False) -> Iterator[Operation]:
    """Stop gracefully, undefine, forget; unless the VM is being replaced, delete its seed
    and console log too."""
    obj = ctx.observed(change)
    if obj is not None and obj.spec.get("state") == "running":
        yield GracefulStop(change.key, shutdown_timeout(ctx.desired.get(change.address), obj))
    yield UndefineDomain(change.key, nvram=obj is not None and obj.spec.get("firmware") == "uefi")
    yield Forget(change.address)
    yield ForgetSnapshots(change.address)
    if not keep_seed:
        for address, record in sorted(ctx.records.items()):
            if change.address in (record.get("seed_of"), record.get("log_of")):
                yield DeleteVmVolume(address, log=bool(record.get("log_of")))
