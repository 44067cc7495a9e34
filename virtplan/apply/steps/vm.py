"""VMs: define (keeping device addresses and copy-on-write layers) and start; live changes
(`vm_live`) or a new definition and a graceful restart; stop gracefully and undefine, with
the volumes the VM owns (`vm_volumes`)."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.records import ChooseUuid, Forget, ForgetIdentity, Recorded
from virtplan.apply.steps.shell import SENSITIVE, file_name, heredoc, q
from virtplan.apply.steps.vm_live import HOT, AttachDevice, DetachDisk, ReplugNic
from virtplan.apply.steps.vm_volumes import ClaimConsoleLog, DeleteVmVolume, WriteSeed
from virtplan.documents.merge import redefinition
from virtplan.documents.render import console_log_path
from virtplan.hosts.observe import ObservedObject
from virtplan.model import VM, Resource
from virtplan.plan.changes import Action, Reason, ResourceChange
from virtplan.plan.policy import data_disks_removed, hot_fields, plugged_fields, redefines

DEFAULT_SHUTDOWN_TIMEOUT = 60.0
_DIGEST_ATTR = {
    name: re.compile(rf"""(\b{name}=["'])[0-9a-f]+(["'])""") for name in ("graphics-password", "cloud-init")
}


# -- defining and starting --------------------------------------------------------------------
@dataclass(frozen=True)
class DefineDomain(Operation):
    """Define the VM as rendered; `keep_from` (the current definition) keeps its device
    addresses and everything the stack does not model (virtplan.documents.merge); disks on
    frozen volumes point at their top layer (virtplan.apply.layers).
    The shell form masks secrets: "(sensitive)" stands where the password goes."""

    vm: VM
    keep_from: str | None = None

    def document(self, ctx: Context, reveal_secrets: bool) -> str:
        from virtplan.apply.layers import apply_layers

        xml = ctx.renderer.domain_xml(self.vm, reveal_secrets=reveal_secrets)
        if self.keep_from is not None:
            xml = redefinition(xml, self.keep_from)
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
        if self.vm.cloud_init is not None and self.vm.cloud_init.has_secret:
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
        dom = rt.handle("vm", self.name)
        if self.timeout > 0 and dom.isActive():
            rt.say(f"waiting up to {self.timeout:g} s for vm {self.name} to shut down (ACPI power button), "
                   "then forcing it off")  # fmt: skip
        graceful_stop(dom, self.timeout)

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


@dataclass(frozen=True)
class RenameDomain(Operation):
    """Rename a stopped domain (libvirt renames only those); it keeps its UUID and devices."""

    old: str
    new: str

    def run(self, rt: Runtime) -> None:
        dom = rt.handle("vm", self.old)
        dom.rename(self.new, 0)
        rt.remember("vm", self.new, rt.conn.lookupByName(self.new))

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh domrename {q(self.old)} {q(self.new)}"]


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
    yield ChooseUuid(change.address)
    yield DefineDomain(vm)
    if vm.autostart:
        yield DomainAutostart(vm.name, True)
    if vm.state == "running":
        yield StartDomain(vm.name)
    yield Recorded(change)


def update(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    if change.reason == Reason.RENAMED:
        yield from rename(change, ctx)
        return
    yield from _change(change, ctx, restart=False)


def restart(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    if change.reason == Reason.RENAMED:
        yield from rename(change, ctx)
        return
    yield from _change(change, ctx, restart=True)


def rename(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    """A renamed VM (renamed_from): shut down if running (libvirt renames only stopped
    domains), renamed, defined as declared (same UUID, MACs and disks; a new seed and
    console log, named after it), started again if declared running; its old seed and
    log go."""
    vm: VM = ctx.resource(change)
    assert change.moved_from is not None
    obj = ctx.host.get("vm", change.moved_from)
    assert obj is not None
    old_address = f"{ctx.host.name}/vm/{change.moved_from}"
    if obj.spec.get("state") == "running":
        yield GracefulStop(change.moved_from, float(vm.shutdown_timeout))
    yield RenameDomain(change.moved_from, vm.name)
    yield Forget(old_address)
    if vm.cloud_init is not None:
        yield WriteSeed(vm)
    if console_log_path(vm) is not None:
        yield ClaimConsoleLog(vm)
    yield DefineDomain(vm, keep_from=_keepable(obj))
    yield DomainAutostart(vm.name, vm.autostart)
    if vm.state == "running":
        yield StartDomain(vm.name)
    for address, record in sorted(ctx.records.items()):
        if old_address in (record.get("seed_of"), record.get("log_of")):
            yield DeleteVmVolume(address, log=bool(record.get("log_of")))
    yield Recorded(change)


def _keepable(obj: ObservedObject) -> str | None:
    """The definition a redefinition keeps from; none when libvirt's XML does not parse (the
    stack's definition then replaces it whole)."""
    return obj.xml if obj.problem is None else None


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
        if running and not restart and "disks" in fields:  # the guest lets go first; then the definition
            for disk in data_disks_removed(fields["disks"].before or [], fields["disks"].after or []):
                yield DetachDisk(vm.name, disk["volume"], obj.xml)
        if "cloud_init" in fields and vm.cloud_init is not None:
            yield WriteSeed(vm)
        if "console_log" in fields and console_log_path(vm) is not None:
            yield ClaimConsoleLog(vm)
        define = DefineDomain(vm, keep_from=_keepable(obj))
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
    if "unplugged" in fields and running and vm.state == "running" and not restart:
        nics = fields["nics"].after if "nics" in fields else obj.spec.get("nics", [])  # a renamed network's new name
        yield from _replugs(vm, obj, fields["unplugged"].before or [], nics)
    if "autostart" in fields:
        yield DomainAutostart(vm.name, vm.autostart)
    if "state" in fields:
        if vm.state == "running" and not running:
            yield StartDomain(vm.name)
        elif vm.state == "stopped" and running:
            yield GracefulStop(vm.name, float(vm.shutdown_timeout))
    yield Recorded(change)


def _replugs(vm: VM, obj: ObservedObject, macs: list[str], nics: list[Any]) -> Iterator[Operation]:
    """Re-plug each NIC in `macs` into its network as `nics` (the NICs' specs) say (see ReplugNic)."""
    networks = {n["mac"]: n.get("network") for n in nics}
    bridges = {n.network.name: n.network.bridge_name for n in vm.nics if n.network is not None}
    for mac in macs:
        network = networks.get(mac)
        if network:
            yield ReplugNic(vm.name, mac, network, bridges.get(network, ""), obj.xml)


def replace(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from delete(change, ctx, keep_seed=True)
    yield ForgetIdentity(change.address)
    yield from create(change, ctx)


def delete_timeout(change: ResourceChange, ctx: Context, obj: ObservedObject) -> float:
    """How long a running VM that is deleted gets to shut down: no time at all when every
    disk it has goes with it in this plan (nothing on them is kept, so there is nothing to
    flush) unless the stack asks for a clean shutdown (`shutdown_on_delete`); else its
    shutdown timeout."""
    declared = ctx.desired.get(change.address)
    if isinstance(declared, VM):
        asked = declared.shutdown_on_delete
    else:
        asked = obj.owner is not None and obj.owner.attrs.get("shutdown-on-delete") == "yes"
    volumes = [d.get("volume") for d in obj.spec.get("disks", []) if d.get("device", "disk") == "disk"]
    kept = [v for v in volumes if f"{ctx.host.name}/volume/{v}" not in ctx.deleted]
    if asked or kept or change.action != Action.DELETE:
        return shutdown_timeout(declared, obj)
    return 0.0


def delete(change: ResourceChange, ctx: Context, keep_seed: bool = False) -> Iterator[Operation]:
    """Stop (gracefully unless its disks go too, see `delete_timeout`), undefine, forget;
    unless the VM is being replaced, delete its seed and console log too."""
    obj = ctx.observed(change)
    if obj is not None and obj.spec.get("state") == "running":
        yield GracefulStop(change.key, delete_timeout(change, ctx, obj))
    yield UndefineDomain(change.key, nvram=obj is not None and obj.spec.get("firmware") == "uefi")
    yield Forget(change.address)
    yield ForgetSnapshots(change.address)
    if not keep_seed:
        for address, record in sorted(ctx.records.items()):
            if change.address in (record.get("seed_of"), record.get("log_of")):
                yield DeleteVmVolume(address, log=bool(record.get("log_of")))
