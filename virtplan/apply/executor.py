"""Execute a plan through libvirt.

Hosts are applied in parallel, each with a bounded pool of workers; a change starts once
the changes it depends on are done. The first failure stops new work (running changes
finish) and the report says what was done, what failed and what did not run. Every step
is idempotent with respect to a fresh plan: after a crash, planning again sees what
exists (pools and volumes are recorded before they are created) and converges.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtplan.apply.claims import AppearedMeanwhile, confirm_volume, create_volume, fresh_uuid, is_ours, with_uuid
from virtplan.documents.merge import device_xml, keep_device_addresses
from virtplan.documents.records_xml import volume_xml
from virtplan.documents.render import Renderer, console_log_path
from virtplan.documents.seed import build_seed_iso
from virtplan.errors import ApplyError
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.pools import refresh_pool
from virtplan.hosts.records import Records
from virtplan.model import VM, Network, Pool, Resource, Stack, Volume
from virtplan.plan.planner import Plan, ResourceChange

ProgressFn = Callable[[str, ResourceChange, str | None], None]
DEFAULT_SHUTDOWN_TIMEOUT = 60.0
CHUNK = 1024 * 1024


@dataclass
class Outcome:
    address: str
    action: str
    status: str  # done | failed | not run
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ApplyReport:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.status == "done" for o in self.outcomes)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def summary(self) -> str:
        lines = []
        for status in ("done", "failed", "not run"):
            items = self.by_status(status)
            if items:
                lines.append(f"{status}: " + ", ".join(f"{o.action} {o.address}" for o in items))
        for o in self.by_status("failed"):
            lines.append(f"error in {o.address}: {o.error}")
        return "\n".join(lines)


def apply_plan(
    plan: Plan,
    stack: Stack,
    renderer: Renderer,
    observed: dict[str, HostState],
    store: Records,
    connections: dict[str, Any],
    progress: ProgressFn | None = None,
) -> ApplyReport:
    """Apply every change of `plan`; raise ApplyError (with the report) on failure."""
    report = ApplyReport()
    lock = threading.Lock()
    desired = stack.by_address()
    hosts = [h for h in stack.hosts if plan.for_host(h.name)]

    def run_host(name: str, workers: int) -> None:
        applier = HostApplier(connections[name], observed[name], stack, renderer, store, desired)
        outcomes = applier.run(plan.for_host(name), workers, progress)
        with lock:
            report.outcomes.extend(outcomes)

    threads = [threading.Thread(target=run_host, args=(h.name, h.workers)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not report.ok:
        raise ApplyError("apply stopped at a failure:\n" + report.summary(), report)
    return report


class HostApplier:
    """Applies the changes of one host over one libvirt connection."""

    def __init__(
        self,
        conn: Any,
        host: HostState,
        stack: Stack,
        renderer: Renderer,
        store: Records,
        desired: dict[str, Resource],
    ):
        self.conn, self.host, self.stack, self.renderer = conn, host, stack, renderer
        self.store, self.desired = store, desired
        self.applied: dict[str, dict[str, Any]] = {}  # address -> {"applied": spec}, written by run()
        self._applied_lock = threading.Lock()

    # -- scheduling -------------------------------------------------------------------
    def run(self, changes: list[ResourceChange], workers: int, progress: ProgressFn | None) -> list[Outcome]:
        in_plan = {c.address for c in changes}
        pending = list(changes)
        done: set[str] = set()
        outcomes: list[Outcome] = []
        failed = False
        running: dict[Future[None], tuple[ResourceChange, float]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"apply-{self.host.name}") as pool:
            while pending or running:
                if not failed:
                    for change in [c for c in pending if all(d in done for d in c.depends_on if d in in_plan)]:
                        pending.remove(change)
                        if progress:
                            progress("start", change, None)
                        running[pool.submit(self.execute, change)] = (change, time.monotonic())
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    change, started = running.pop(future)
                    seconds = time.monotonic() - started
                    error = future.exception()
                    if error is None:
                        done.add(change.address)
                        outcomes.append(Outcome(change.address, change.action.value, "done", None, seconds))
                        if progress:
                            progress("done", change, None)
                    else:
                        failed = True
                        message = _error_text(error)
                        outcomes.append(Outcome(change.address, change.action.value, "failed", message, seconds))
                        if progress:
                            progress("failed", change, message)
        outcomes += [Outcome(c.address, c.action.value, "not run") for c in pending]
        if self.applied:
            self.store.put_many(self.host.uri, self.applied)
        return outcomes

    def execute(self, change: ResourceChange) -> None:
        handler = getattr(self, f"{change.kind}_{change.action.value}")
        handler(change)

    def resource(self, change: ResourceChange) -> Any:
        return self.desired[change.address]

    def observed(self, change: ResourceChange) -> ObservedObject | None:
        return self.host.get(change.kind, change.key)

    # -- networks ---------------------------------------------------------------------
    def network_create(self, change: ResourceChange) -> None:
        import libvirt

        net: Network = self.resource(change)
        fresh_uuid(self.renderer, change.address)  # a define never takes over a network that appeared meanwhile
        obj = self.conn.networkDefineXML(self.renderer.network_xml(net))
        obj.setAutostart(1 if net.autostart else 0)
        try:
            obj.create()
        except libvirt.libvirtError:
            obj.undefine()  # leave nothing half-made behind: a re-run creates it again
            raise
        self._record(change, obj.UUIDString())

    def network_update(self, change: ResourceChange) -> None:
        import libvirt

        net: Network = self.resource(change)
        obj = self.conn.networkLookupByName(net.name)
        for fc in change.changes:
            if fc.field == "reservations":
                flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
                if obj.isActive():
                    flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
                _update_reservations(obj, fc.before or [], fc.after or [], flags)
            elif fc.field == "autostart":
                obj.setAutostart(1 if fc.after else 0)
            elif fc.field == "active" and fc.after and not obj.isActive():
                obj.create()
            elif fc.field not in ("active",):
                self.conn.networkDefineXML(self.renderer.network_xml(net))
        self._record(change, obj.UUIDString())

    def network_restart(self, change: ResourceChange) -> None:
        net: Network = self.resource(change)
        obj = self.conn.networkDefineXML(self.renderer.network_xml(net))
        if obj.isActive():
            obj.destroy()
        obj.create()
        obj.setAutostart(1 if net.autostart else 0)
        self._record(change, obj.UUIDString())

    def network_replace(self, change: ResourceChange) -> None:
        self.network_delete(change)
        self.renderer.identities.pop(change.address, None)
        self.network_create(change)

    def network_delete(self, change: ResourceChange) -> None:
        obj = self.conn.networkLookupByName(change.key)
        if obj.isActive():
            obj.destroy()
        obj.undefine()
        self.store.forget(self.host.uri, change.address)

    # -- pools ------------------------------------------------------------------------
    def pool_create(self, change: ResourceChange) -> None:
        import libvirt

        pool: Pool = self.resource(change)
        chosen = fresh_uuid(self.renderer, change.address)
        self.store.put(self.host.uri, change.address, kind="pool", pending=True, id=chosen)
        try:
            obj = self.conn.storagePoolDefineXML(with_uuid(self.renderer.pool_xml(pool), chosen), 0)
        except BaseException:
            self.store.forget(self.host.uri, change.address)  # nothing of ours was defined
            raise
        self.store.put(self.host.uri, change.address, pending=False)  # defined with our UUID: ours
        created_dir = False
        try:
            obj.create()
        except libvirt.libvirtError:
            obj.build(0)  # the directory was missing: virtplan creates (and may remove) it
            created_dir = True
            obj.create()
        obj.setAutostart(1 if pool.autostart else 0)
        self.store.put(self.host.uri, change.address, id=obj.UUIDString(), pending=False, created_dir=created_dir)
        self._note_applied(change)

    def pool_update(self, change: ResourceChange) -> None:
        obj = self.conn.storagePoolLookupByName(change.key)
        for fc in change.changes:
            if fc.field == "active" and fc.after and not obj.isActive():
                obj.create()
            elif fc.field == "autostart":
                obj.setAutostart(1 if fc.after else 0)
        self._note_applied(change)

    def pool_delete(self, change: ResourceChange) -> None:
        record = self.store.get(self.host.uri, change.address) or {}
        obj = self.conn.storagePoolLookupByName(change.key)
        if obj.isActive():
            refresh_pool(obj)
            empty = obj.numOfVolumes() == 0
            obj.destroy()
            if record.get("created_dir") and empty:
                obj.delete(0)  # removes the (empty) directory virtplan created
        obj.undefine()
        self.store.forget(self.host.uri, change.address)

    # -- volumes ----------------------------------------------------------------------
    def volume_create(self, change: ResourceChange) -> None:
        vol: Volume = self.resource(change)
        assert vol.pool is not None
        pool = self.conn.storagePoolLookupByName(vol.pool.name)
        ctx = self.renderer.volume_context(vol)
        expect = {"format": vol.format, "backing": ctx.backing_path}

        def make() -> Any:
            if vol.source is not None:
                return self._upload(pool, vol.name, Path(vol.source), vol.format)
            if vol.copy_of is not None:  # a full copy, made by libvirt on the host (chains flattened)
                return pool.createXMLFrom(
                    self.renderer.volume_xml(vol), self.conn.storageVolLookupByPath(vol.copy_of), 0
                )
            return pool.createXML(self.renderer.volume_xml(vol), 0)

        create_volume(self.store, self.host.uri, change.address, pool, vol.name, make, expect,
                      upload=vol.source is not None)  # fmt: skip
        self._note_applied(change)

    def _upload(self, pool: Any, name: str, path: Path, fmt: str) -> Any:
        size = path.stat().st_size
        obj = pool.createXML(volume_xml(name, size, fmt), 0)
        stream = self.conn.newStream(0)
        obj.upload(stream, 0, size, 0)
        with path.open("rb") as f:
            stream.sendAll(lambda _s, n, fh: fh.read(min(n, CHUNK)), f)
        stream.finish()
        refresh_pool(pool)
        return obj

    def volume_update(self, change: ResourceChange) -> None:
        import libvirt

        for fc in change.changes:
            if fc.field != "capacity":
                continue
            user = self._running_user(change.key)
            if user is not None:
                dom, target = user
                dom.blockResize(target, fc.after, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            else:
                pool_name, _, name = change.key.partition("/")
                self.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name).resize(fc.after, 0)
            pool_name, _, name = change.key.partition("/")
            vol = self.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
            confirm_volume(self.store, self.host.uri, change.address, vol)  # its new size is still ours
        self._note_applied(change)

    def _running_user(self, key: str) -> tuple[Any, str] | None:
        """A running domain with `key` attached, and the disk's target device."""
        import xml.etree.ElementTree as ET

        for obj in self.host.of_kind("vm"):
            if obj.spec.get("state") != "running":
                continue
            for disk in ET.fromstring(obj.xml).iterfind("devices/disk"):
                src, tgt = disk.find("source"), disk.find("target")
                if src is not None and tgt is not None and f"{src.get('pool')}/{src.get('volume')}" == key:
                    return self.conn.lookupByName(obj.key), tgt.get("dev", "")
        return None

    def volume_replace(self, change: ResourceChange) -> None:
        self.volume_delete(change)
        self.volume_create(change)

    def volume_delete(self, change: ResourceChange) -> None:
        from virtplan.apply.protection import refuse_if_backing

        pool_name, _, name = change.key.partition("/")
        vol = self.conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
        refuse_if_backing(self, change.address, vol.path())  # overlays of other stacks (clones)
        vol.delete(0)
        self.store.forget(self.host.uri, change.address)

    # -- VMs --------------------------------------------------------------------------
    def vm_create(self, change: ResourceChange) -> None:
        vm: VM = self.resource(change)
        if vm.cloud_init is not None:
            self._write_seed(vm)
        self._claim_console_log(vm)
        fresh_uuid(self.renderer, change.address)  # a define never takes over a domain that appeared meanwhile
        dom = self.conn.defineXML(self._with_layers(self.renderer.domain_xml(vm)))
        dom.setAutostart(1 if vm.autostart else 0)
        if vm.state == "running":
            dom.create()
        self._record(change, dom.UUIDString())

    def vm_update(self, change: ResourceChange) -> None:
        self._vm_change(change, restart=False)

    def vm_restart(self, change: ResourceChange) -> None:
        self._vm_change(change, restart=True)

    def _vm_change(self, change: ResourceChange, restart: bool) -> None:
        import libvirt

        vm: VM = self.resource(change)
        obj = self.observed(change)
        assert obj is not None
        fields = {fc.field: fc for fc in change.changes}
        if "cloud_init" in fields and vm.cloud_init is not None:
            self._write_seed(vm)
        if "console_log" in fields:
            self._claim_console_log(vm)
        dom = self.conn.lookupByName(vm.name)
        if set(fields) - {"state", "autostart"}:
            dom = self.conn.defineXML(self._with_layers(keep_device_addresses(self.renderer.domain_xml(vm), obj.xml)))
        running = bool(dom.isActive())
        live = libvirt.VIR_DOMAIN_AFFECT_LIVE
        if running and not restart:
            if "memory" in fields:
                dom.setMemoryFlags(fields["memory"].after // 1024, live)
            if "vcpus" in fields:
                dom.setVcpusFlags(fields["vcpus"].after, live)
            if "description" in fields:
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_DESCRIPTION, vm.description or None, None, None, live)
            new_xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            for name, tag, key in (("disks", "disk", "volume"), ("nics", "interface", "mac")):
                if name in fields:
                    for item in (fields[name].after or [])[len(fields[name].before or []) :]:
                        dom.attachDeviceFlags(self._device_snippet(new_xml, tag, key, item), live)
        if restart and running:
            graceful_stop(dom, vm.shutdown_timeout)
            dom.create()
        if "autostart" in fields:
            dom.setAutostart(1 if vm.autostart else 0)
        if "state" in fields:
            if vm.state == "running" and not dom.isActive():
                dom.create()
            elif vm.state == "stopped" and dom.isActive():
                graceful_stop(dom, vm.shutdown_timeout)
        self._record(change, dom.UUIDString())

    @staticmethod
    def _device_snippet(domain_xml: str, tag: str, key: str, item: dict[str, Any]) -> str:
        import xml.etree.ElementTree as ET

        if tag == "interface":
            return device_xml(domain_xml, tag, item["mac"])
        for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
            src, tgt = disk.find("source"), disk.find("target")
            if src is not None and tgt is not None and f"{src.get('pool')}/{src.get('volume')}" == item[key]:
                return device_xml(domain_xml, "disk", tgt.get("dev", ""))
        raise KeyError(item[key])

    def vm_replace(self, change: ResourceChange) -> None:
        self.vm_delete(change, keep_seed=True)
        self.renderer.identities.pop(change.address, None)
        self.vm_create(change)

    def vm_delete(self, change: ResourceChange, keep_seed: bool = False) -> None:
        import libvirt

        dom = self.conn.lookupByName(change.key)
        obj = self.observed(change)
        timeout = shutdown_timeout(self.desired.get(change.address), obj)
        if dom.isActive():
            graceful_stop(dom, timeout)
        flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
        if obj is not None and obj.spec.get("firmware") == "uefi":
            flags |= libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
        dom.undefineFlags(flags)
        self.store.forget(self.host.uri, change.address)
        self._forget_snapshots(change.address)
        if not keep_seed:
            self._delete_auxiliary(change.address)

    def _with_layers(self, domain_xml: str) -> str:
        """Disks on frozen volumes point at their top copy-on-write layer (virtplan.apply.layers)."""
        from virtplan.apply.layers import apply_layers

        return apply_layers(domain_xml, self.store, self.host.uri, self.host.name)

    def _forget_snapshots(self, vm_address: str) -> None:
        """Snapshot and freeze records of a deleted VM (their layers go with the volumes)."""
        for address, record in self.store.records(self.host.uri).items():
            if record.get("kind") in ("snapshot", "freeze") and record.get("vm") == vm_address:
                self.store.forget(self.host.uri, address)

    # -- snapshots (virtplan.apply.snapshots) ---------------------------------------------------
    def snapshot_create(self, change: ResourceChange) -> None:
        from virtplan.apply.snapshots import create_declared

        create_declared(self, change)

    def snapshot_delete(self, change: ResourceChange) -> None:
        from virtplan.apply.snapshots import delete_declared

        delete_declared(self, change)

    def _write_seed(self, vm: VM) -> None:
        """(Re)write the VM's NoCloud seed volume, as a volume of the stack's own."""
        import libvirt

        assert vm.seed_pool is not None
        data = build_seed_iso(self.renderer.seed_files(vm))
        pool = self.conn.storagePoolLookupByName(vm.seed_pool.name)
        name = vm.seed_volume_name
        address = f"{self.host.name}/volume/{vm.seed_pool.name}/{name}"
        try:
            old = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        else:
            if not is_ours(self.store, self.host.uri, address, old):
                raise AppearedMeanwhile(f"{address}: a volume named {name!r} exists and is not this stack's seed; "
                                        "virtplan leaves it alone (remove or rename it)")  # fmt: skip
            old.delete(0)
            self.store.forget(self.host.uri, address)

        def make() -> Any:
            vol = pool.createXML(volume_xml(name, len(data), "raw"), 0)
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += stream.send(bytes(view[offset : offset + CHUNK]))
            stream.finish()
            return vol

        create_volume(self.store, self.host.uri, address, pool, name, make, {"format": "raw", "backing": None},
                      upload=True, seed_of=vm.address)  # fmt: skip

    def _claim_console_log(self, vm: VM) -> None:
        """Record the console log file (written by libvirt's virtlogd) as the VM's own."""
        if console_log_path(vm) is None or vm.seed_pool is None:
            return
        address = f"{self.host.name}/volume/{vm.seed_pool.name}/{vm.console_log_name}"
        self.store.put(self.host.uri, address, kind="volume", pending=True, log_of=vm.address)

    def _delete_auxiliary(self, vm_address: str) -> None:
        """Delete the volumes a VM owns besides its disks: its seed and its console log."""
        import libvirt

        for address, record in self.store.records(self.host.uri).items():
            if vm_address not in (record.get("seed_of"), record.get("log_of")):
                continue
            _, _, key = address.split("/", 2)
            pool_name, _, name = key.partition("/")
            try:
                pool = self.conn.storagePoolLookupByName(pool_name)
                if record.get("log_of"):
                    refresh_pool(pool)  # libvirt learns of files virtlogd created only on refresh
                pool.storageVolLookupByName(name).delete(0)
            except libvirt.libvirtError as exc:
                gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
                if exc.get_error_code() not in (*gone, libvirt.VIR_ERR_OPERATION_INVALID):
                    raise
            self.store.forget(self.host.uri, address)

    def _record(self, change: ResourceChange, identity: str) -> None:
        self.store.put(self.host.uri, change.address, kind=change.kind, id=identity, pending=False)
        self._note_applied(change)

    def _note_applied(self, change: ResourceChange) -> None:
        """Remember the spec applied to this address; `run` records them all in one write
        (one write per change would cost a ledger write per object), so `virtplan drift` can
        tell changes made outside virtplan from the stack's own pending changes."""
        from virtplan.plan.planner import desired_spec

        resource = self.desired.get(change.address)
        if resource is None:
            return
        try:
            spec = desired_spec(resource, self.renderer)
        except (ValueError, OSError):
            return
        with self._applied_lock:
            self.applied[change.address] = {"applied": spec}


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


def _update_reservations(net: Any, before: list[dict[str, Any]], after: list[dict[str, Any]], flags: int) -> None:
    """Turn the persistent reservations `before` into `after`, and the running network's too.

    `before` is the persistent config; the running network may differ (someone edited only
    one of them), so live changes tolerate an entry that is already gone or already there.
    """
    import libvirt

    def host_xml(r: dict[str, Any]) -> str:
        name = f" name='{_xml_text(r['name'])}'" if r.get("name") else ""
        return f"<host mac='{r['mac']}'{name} ip='{r['ip']}'/>"

    section = libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST
    changes = [(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, r) for r in before if r not in after]
    changes += [(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, r) for r in after if r not in before]
    for command, r in changes:
        net.update(command, section, -1, host_xml(r), libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
        if flags & libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE:
            try:
                net.update(command, section, -1, host_xml(r), libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                # Not in the running network (delete) or already in it (add): nothing to do there.
                if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED):
                    raise


def _xml_text(value: str) -> str:
    from xml.sax.saxutils import quoteattr

    return quoteattr(value)[1:-1]


def _error_text(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0] if len(text) > 500 else text
