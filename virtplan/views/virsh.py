"""The `virsh` commands equivalent to each planned change (`virtplan plan --commands`).

For every change this gives the shell commands an operator would run by hand to do what
`apply` does through the libvirt API: the same XML documents (written with here-documents),
the same order, the same graceful stop. Run against a fresh host, the commands produce
the same libvirt state as `apply` (the integration tests replay them with virsh and compare).
Set LIBVIRT_DEFAULT_URI (the script does, per host) and run them in an empty folder:
XML files and seed images are written there.

Two things have no virsh equivalent and appear as comments: virtplan's own ownership record
of storage pools and volumes (libvirt cannot tag those), and secrets, which are never
printed: "(sensitive)" marks where a password goes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from virtplan.documents.merge import keep_device_addresses
from virtplan.documents.render import Renderer
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import Records
from virtplan.model import VM, Network, Pool, Stack, Volume
from virtplan.plan.planner import Action, Plan, ResourceChange

SENSITIVE = "(sensitive)"
SIMPLE_VM_FIELDS = {"memory", "vcpus", "description", "state", "autostart"}
_SEED_SECRET = re.compile(r"\(sensitive:[0-9a-f]+\)")
_DIGEST_ATTR = {
    name: re.compile(rf"""(\b{name}=["'])[0-9a-f]+(["'])""") for name in ("graphics-password", "cloud-init")
}

q = shlex.quote


def _file_name(*parts: str) -> str:
    return "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p) for p in parts)


def heredoc(path: str, content: str) -> str:
    """A command that writes `content` to `path` verbatim (quoted here-document)."""
    marker = "EOF"
    while marker in content.splitlines():
        marker += "_"
    body = content if content.endswith("\n") else content + "\n"
    return f"cat > {q(path)} <<'{marker}'\n{body}{marker}"


def graceful_stop(name: str, timeout: float) -> list[str]:
    """ACPI shutdown, wait up to `timeout` s, then force the guest off (as apply does)."""
    if timeout <= 0:
        return [f"virsh destroy {q(name)}"]
    wait = f'until virsh domstate {q(name)} | grep -qx "shut off"; do sleep 0.5; done'
    return [
        f"virsh shutdown {q(name)} || true",
        f"timeout {timeout:g} sh -c {q(wait)} || virsh destroy {q(name)}",
    ]


class Commands:
    """Builds the command lists of one plan."""

    def __init__(self, stack: Stack, renderer: Renderer, observed: dict[str, HostState], store: Records):
        self.stack, self.renderer, self.observed, self.store = stack, renderer, observed, store
        self.desired = stack.by_address()

    def for_plan(self, plan: Plan) -> dict[str, list[str]]:
        deleted = {c.address for c in plan.changes if c.action == Action.DELETE}
        out: dict[str, list[str]] = {}
        for change in plan.changes:
            handler = getattr(self, f"{change.kind}_{change.action.value}")
            out[change.address] = handler(change, self.observed[change.host], deleted)
        return out

    @contextlib.contextmanager
    def _fresh_identity(self, address: str) -> Iterator[None]:
        """Render as for a new object (a replace does not keep the old UUID)."""
        kept = self.renderer.identities.pop(address, None)
        try:
            yield
        finally:
            if kept is not None:
                self.renderer.identities[address] = kept

    def _resource(self, change: ResourceChange) -> Any:
        return self.desired[change.address]

    # -- snapshots (virtplan.apply.snapshots) ------------------------------------------------------
    def snapshot_create(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        vm, _, name = change.key.partition("/")
        memory = bool(getattr(self._resource(change), "memory", False))
        if memory:
            return [f"virsh snapshot-create-as {q(vm)} {q(name)}  # a checkpoint: disks and memory"]
        return [f"# disk-only snapshots freeze the disks into copy-on-write layers that virtplan tracks; "
                f"run: virtplan snapshot create STACK {q(vm)} --name {q(name)}"]  # fmt: skip

    def snapshot_delete(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        vm, _, name = change.key.partition("/")
        return [f"# forget snapshot {name} of {vm}: virtplan snapshot delete STACK {q(vm)} --name {q(name)}"]

    # -- networks ---------------------------------------------------------------------
    def network_create(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        net: Network = self._resource(change)
        xml = _file_name("network", net.name) + ".xml"
        out = [heredoc(xml, self.renderer.network_xml(net)), f"virsh net-define {q(xml)}"]
        if net.autostart:
            out.append(f"virsh net-autostart {q(net.name)}")
        out.append(f"virsh net-start {q(net.name)}")
        return out

    def network_update(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        net: Network = self._resource(change)
        obj = host.get("network", net.name)
        active = bool(obj and obj.spec.get("active"))
        out: list[str] = []
        for fc in change.changes:
            if fc.field == "reservations":
                flags = "--config --live" if active else "--config"
                before, after = fc.before or [], fc.after or []
                for r in before:
                    if r not in after:
                        out.append(f"virsh net-update {q(net.name)} delete ip-dhcp-host {q(_host_xml(r))} {flags}")
                for r in after:
                    if r not in before:
                        out.append(f"virsh net-update {q(net.name)} add-last ip-dhcp-host {q(_host_xml(r))} {flags}")
            elif fc.field == "autostart":
                out.append(f"virsh net-autostart {'--disable ' if not fc.after else ''}{q(net.name)}")
            elif fc.field == "active":
                if fc.after and not active:
                    out.append(f"virsh net-start {q(net.name)}")
            elif not any(c.startswith("cat > ") for c in out):
                xml = _file_name("network", net.name) + ".xml"
                out += [heredoc(xml, self.renderer.network_xml(net)), f"virsh net-define {q(xml)}"]
        return out

    def network_restart(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        net: Network = self._resource(change)
        obj = host.get("network", net.name)
        xml = _file_name("network", net.name) + ".xml"
        out = [heredoc(xml, self.renderer.network_xml(net)), f"virsh net-define {q(xml)}"]
        if obj is not None and obj.spec.get("active"):
            out.append(f"virsh net-destroy {q(net.name)}")
        out.append(f"virsh net-start {q(net.name)}")
        out.append(f"virsh net-autostart {'' if net.autostart else '--disable '}{q(net.name)}")
        return out

    def network_replace(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        with self._fresh_identity(change.address):
            return self.network_delete(change, host, deleted) + self.network_create(change, host, deleted)

    def network_delete(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        obj = host.get("network", change.key)
        out = [f"virsh net-destroy {q(change.key)}"] if obj is not None and obj.spec.get("active") else []
        return [*out, f"virsh net-undefine {q(change.key)}"]

    # -- pools ------------------------------------------------------------------------
    def pool_create(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        pool: Pool = self._resource(change)
        xml = _file_name("pool", pool.name) + ".xml"
        name = q(pool.name)
        out = [
            heredoc(xml, self.renderer.pool_xml(pool)),
            f"virsh pool-define {q(xml)}",
            f"virsh pool-start {name} || {{ virsh pool-build {name} && virsh pool-start {name}; }}"
            "  # builds (creates) the directory only if it is missing",
        ]
        if pool.autostart:
            out.append(f"virsh pool-autostart {q(pool.name)}")
        out.append(self._owned_note(change))
        return out

    def pool_update(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        out = []
        for fc in change.changes:
            if fc.field == "active" and fc.after:
                out.append(f"virsh pool-start {q(change.key)}")
            elif fc.field == "autostart":
                out.append(f"virsh pool-autostart {'' if fc.after else '--disable '}{q(change.key)}")
        return out

    def pool_delete(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        record = self.store.get(host.uri, change.address) or {}
        obj = host.get("pool", change.key)
        out = []
        if obj is not None and obj.spec.get("active"):
            out.append(f"virsh pool-destroy {q(change.key)}")
            left = [
                v.key for v in host.of_kind("volume")
                if v.key.startswith(change.key + "/") and f"{host.name}/volume/{v.key}" not in deleted
                and not self._goes_with_a_vm(host, f"{host.name}/volume/{v.key}", deleted)
            ]  # fmt: skip
            if record.get("created_dir") and not left:
                out.append(f"virsh pool-delete {q(change.key)}  # removes the empty directory virtplan created")
        out.append(f"virsh pool-undefine {q(change.key)}")
        return out

    def _goes_with_a_vm(self, host: HostState, address: str, deleted: set[str]) -> bool:
        record = self.store.get(host.uri, address) or {}
        owner = record.get("seed_of") or record.get("log_of")
        return bool(owner) and owner in deleted

    def _owned_note(self, change: ResourceChange) -> str:
        return (
            f"# (virtplan records {change.address} as owned by stack {self.stack.key!r} in its records on the "
            f"host; libvirt cannot tag {change.kind}s)"
        )

    # -- volumes ----------------------------------------------------------------------
    def volume_create(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        vol: Volume = self._resource(change)
        assert vol.pool is not None
        pool, name = q(vol.pool.name), q(vol.name)
        if vol.source is not None:
            source = os.path.abspath(vol.source)
            size = Path(source).stat().st_size
            out = [
                f"virsh vol-create-as {pool} {name} {size} --format {vol.format}",
                f"virsh vol-upload --pool {pool} {name} {q(source)}",
            ]
        else:
            ctx = self.renderer.volume_context(vol)
            line = f"virsh vol-create-as {pool} {name} {ctx.capacity} --format {ctx.format}"
            if ctx.backing_path:
                line += f" --backing-vol {q(ctx.backing_path)} --backing-vol-format {ctx.backing_format}"
            out = [line]
        return [*out, self._owned_note(change)]

    def volume_update(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        out = []
        pool, _, name = change.key.partition("/")
        for fc in change.changes:
            if fc.field != "capacity":
                continue
            user = _running_user(host, change.key)
            if user is not None:
                dom, target = user
                out.append(f"virsh blockresize {q(dom)} {q(target)} {fc.after}B")
            else:
                out.append(f"virsh vol-resize --pool {q(pool)} {q(name)} {fc.after}")
        return out

    def volume_replace(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        return self.volume_delete(change, host, deleted) + self.volume_create(change, host, deleted)

    def volume_delete(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        pool, _, name = change.key.partition("/")
        return [f"virsh vol-delete --pool {q(pool)} {q(name)}"]

    # -- VMs --------------------------------------------------------------------------
    def vm_create(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        vm: VM = self._resource(change)
        out = self._seed(vm) if vm.cloud_init is not None else []
        out += self._define(vm, self.renderer.domain_xml(vm, reveal_secrets=False))
        if vm.autostart:
            out.append(f"virsh autostart {q(vm.name)}")
        if vm.state == "running":
            out.append(f"virsh start {q(vm.name)}")
        return out

    def vm_update(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        return self._vm_change(change, host, restart=False)

    def vm_restart(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        return self._vm_change(change, host, restart=True)

    def _vm_change(self, change: ResourceChange, host: HostState, restart: bool) -> list[str]:
        vm: VM = self._resource(change)
        obj = host.get("vm", vm.name)
        assert obj is not None
        name = q(vm.name)
        fields = {fc.field: fc for fc in change.changes}
        running = obj.spec.get("state") == "running"
        out: list[str] = []
        if set(fields) <= SIMPLE_VM_FIELDS:
            # Only live-capable fields: the per-field commands change the definition and,
            # on a running guest, the guest itself.
            flags = "--live --config" if running else "--config"
            if "memory" in fields:
                out.append(f"virsh setmem {name} {fields['memory'].after // 1024}KiB {flags}")
            if "vcpus" in fields:
                out.append(f"virsh setvcpus {name} {fields['vcpus'].after} {flags}")
            if "description" in fields:
                out.append(f"virsh desc {name} {flags} --new-desc {q(vm.description or '')}")
        else:
            if "cloud_init" in fields and vm.cloud_init is not None:
                out += self._seed(vm)
            xml = keep_device_addresses(self.renderer.domain_xml(vm, reveal_secrets=False), obj.xml)
            out += self._define(vm, xml)
            if running and not restart:
                if "memory" in fields:
                    out.append(f"virsh setmem {name} {fields['memory'].after // 1024}KiB --live")
                if "vcpus" in fields:
                    out.append(f"virsh setvcpus {name} {fields['vcpus'].after} --live")
                if "description" in fields:
                    out.append(f"virsh desc {name} --live --new-desc {q(vm.description or '')}")
                out += self._attachments(vm, fields, xml)
            if restart and running:
                out += [*graceful_stop(vm.name, float(vm.shutdown_timeout)), f"virsh start {name}"]
        if "autostart" in fields:
            out.append(f"virsh autostart {'' if vm.autostart else '--disable '}{name}")
        if "state" in fields:
            if vm.state == "running" and not running:
                out.append(f"virsh start {name}")
            elif vm.state == "stopped" and running:
                out += graceful_stop(vm.name, float(vm.shutdown_timeout))
        return out

    def _attachments(self, vm: VM, fields: dict[str, Any], xml: str) -> list[str]:
        """Hot-plug the disks and NICs appended at the end (apply's live additions)."""
        import xml.etree.ElementTree as ET

        out = []
        root = ET.fromstring(xml)
        if "disks" in fields:
            new = (fields["disks"].after or [])[len(fields["disks"].before or []) :]
            for item in new:
                for disk in root.iterfind("devices/disk"):
                    src = disk.find("source")
                    if src is not None and f"{src.get('pool')}/{src.get('volume')}" == item["volume"]:
                        path = _file_name("disk", vm.name, item["volume"]) + ".xml"
                        out += [heredoc(path, ET.tostring(disk, encoding="unicode")),
                                f"virsh attach-device {q(vm.name)} {q(path)} --live"]  # fmt: skip
        if "nics" in fields:
            new = (fields["nics"].after or [])[len(fields["nics"].before or []) :]
            for item in new:
                for iface in root.iterfind("devices/interface"):
                    mac = iface.find("mac")
                    if mac is not None and mac.get("address", "").lower() == item["mac"]:
                        path = _file_name("nic", vm.name, item["mac"]) + ".xml"
                        out += [heredoc(path, ET.tostring(iface, encoding="unicode")),
                                f"virsh attach-device {q(vm.name)} {q(path)} --live"]  # fmt: skip
        return out

    def vm_replace(self, change: ResourceChange, host: HostState, deleted: set[str]) -> list[str]:
        with self._fresh_identity(change.address):
            return self.vm_delete(change, host, deleted, keep_seed=True) + self.vm_create(change, host, deleted)

    def vm_delete(
        self, change: ResourceChange, host: HostState, deleted: set[str], keep_seed: bool = False
    ) -> list[str]:
        from virtplan.apply.executor import shutdown_timeout

        obj = host.get("vm", change.key)
        out = []
        if obj is not None and obj.spec.get("state") == "running":
            out += graceful_stop(change.key, shutdown_timeout(self.desired.get(change.address), obj))
        flags = " --nvram" if obj is not None and obj.spec.get("firmware") == "uefi" else ""
        out.append(f"virsh undefine {q(change.key)} --managed-save{flags}")
        if not keep_seed:
            for address, record in sorted(self.store.records(host.uri).items()):
                if change.address not in (record.get("seed_of"), record.get("log_of")):
                    continue
                pool, _, name = address.split("/", 2)[2].partition("/")
                if record.get("log_of"):
                    out.append(f"virsh pool-refresh {q(pool)}")
                    out.append(f"virsh vol-delete --pool {q(pool)} {q(name)} 2>/dev/null || true  # console log")
                else:
                    out.append(f"virsh vol-delete --pool {q(pool)} {q(name)}")
        return out

    def _define(self, vm: VM, xml: str) -> list[str]:
        path = _file_name("domain", vm.name) + ".xml"
        out = []
        masked = []
        if vm.graphics is not None and vm.graphics.password is not None:
            out.append(f"# {SENSITIVE} in {path} stands for the console password: put the real one there")
            xml, n = _DIGEST_ATTR["graphics-password"].subn(rf"\1{SENSITIVE}\2", xml)
            masked += ["graphics-password"] if n else []
        if vm.cloud_init is not None and vm.cloud_init.password is not None:
            xml, n = _DIGEST_ATTR["cloud-init"].subn(rf"\1{SENSITIVE}\2", xml)
            masked += ["cloud-init"] if n else []
        if masked:
            out.append(
                f"# virtplan's digests of secrets ({', '.join(masked)} in <metadata>) are masked as well: "
                "the next `virtplan apply` records them again"
            )
        return [*out, heredoc(path, xml), f"virsh define {q(path)}"]

    def _seed(self, vm: VM) -> list[str]:
        """Build the NoCloud seed ISO by hand and upload it as the VM's seed volume."""
        assert vm.seed_pool is not None
        folder = _file_name("seed", vm.name)
        iso = vm.seed_volume_name
        files = self.renderer.seed_files(vm, reveal_secrets=False)
        out = [f"mkdir -p {q(folder)}"]
        if vm.cloud_init is not None and vm.cloud_init.password is not None:
            out.append(f"# {SENSITIVE} in {folder}/user-data stands for the password: put the real one there")
        for name, content in sorted(files.items()):
            out.append(heredoc(f"{folder}/{name}", _SEED_SECRET.sub(SENSITIVE, content)))
        paths = " ".join(q(f"{folder}/{n}") for n in sorted(files))
        pool = q(vm.seed_pool.name)
        out += [
            f"genisoimage -quiet -output {q(folder + '.iso')} -volid cidata -joliet -rock {paths}",
            f"virsh vol-delete --pool {pool} {q(iso)} 2>/dev/null || true  # an old seed, if any",
            f'virsh vol-create-as {pool} {q(iso)} "$(stat -c %s {q(folder + ".iso")})" --format raw',
            f"virsh vol-upload --pool {pool} {q(iso)} {q(folder + '.iso')}",
        ]
        return out


def _host_xml(r: dict[str, Any]) -> str:
    from xml.sax.saxutils import quoteattr

    name = f" name={quoteattr(r['name'])}" if r.get("name") else ""
    return f"<host mac={quoteattr(r['mac'])}{name} ip={quoteattr(r['ip'])}/>"


def _running_user(host: HostState, key: str) -> tuple[str, str] | None:
    import xml.etree.ElementTree as ET

    for obj in host.of_kind("vm"):
        if obj.spec.get("state") != "running":
            continue
        for disk in ET.fromstring(obj.xml).iterfind("devices/disk"):
            src, tgt = disk.find("source"), disk.find("target")
            if src is not None and tgt is not None and f"{src.get('pool')}/{src.get('volume')}" == key:
                return obj.key, tgt.get("dev", "")
    return None


def plan_commands(plan: Plan, stack: Stack, renderer: Renderer, observed: dict[str, HostState],
                  store: Records) -> dict[str, list[str]]:  # fmt: skip
    """address -> the shell commands of that change, for every change of `plan`."""
    return Commands(stack, renderer, observed, store).for_plan(plan)


def script(plan: Plan, commands: dict[str, list[str]]) -> str:
    """All commands as one shell script, grouped by host, each change introduced by a comment."""
    from virtplan.views.text import summary

    lines = [
        "#!/bin/sh",
        f"# virsh commands equivalent to `virtplan apply` of stack {plan.stack!r}.",
        f"# {summary(plan)}",
        "# Run in an empty folder: XML files and seed images are written there.",
        "set -eu",
        "",
    ]
    if plan.empty:
        return "\n".join([*lines[:2], "# No changes. The hosts match the stack.", ""])
    for host, uri in plan.hosts.items():
        changes = plan.for_host(host)
        if not changes:
            continue
        lines += [f"# --- host {host} ---", f"export LIBVIRT_DEFAULT_URI={q(uri)}", ""]
        for change in changes:
            lines.append(f"# {change.symbol} {change.kind} {change.key}  ({change.action.value}: {change.reason})")
            if change.destructive:
                lines.append(f"# ! destructive: {change.destructive}")
            lines += commands.get(change.address, [])
            lines.append("")
    return "\n".join(lines)
