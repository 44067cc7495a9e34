"""Networks: define and start; change reservations, autostart and activity in place;
redefine; restart; delete."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.records import ChooseUuid, Forget, ForgetIdentity, Recorded
from virtplan.apply.steps.shell import file_name, heredoc, q
from virtplan.documents.fragments import dhcp_host
from virtplan.model import Network
from virtplan.plan.changes import Reason, ResourceChange
from virtplan.plan.policy import redefines


# -- operations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefineNetwork(Operation):
    net: Network

    def run(self, rt: Runtime) -> None:
        rt.remember("network", self.net.name, rt.conn.networkDefineXML(rt.ctx.renderer.network_xml(self.net)))

    def shell(self, ctx: Context) -> list[str]:
        path = file_name("network", self.net.name) + ".xml"
        return [heredoc(path, ctx.renderer.network_xml(self.net)), f"virsh net-define {q(path)}"]


@dataclass(frozen=True)
class StartNetwork(Operation):
    """Start a network; a new one (`undefine_on_failure`) is undefined again if it cannot
    start, so apply leaves nothing half made (the shell form stops at the failure)."""

    name: str
    undefine_on_failure: bool = False

    def run(self, rt: Runtime) -> None:
        import libvirt

        net = rt.handle("network", self.name)
        try:
            net.create()
        except libvirt.libvirtError:
            if self.undefine_on_failure:
                net.undefine()  # a re-run creates it again
            raise

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh net-start {q(self.name)}"]


@dataclass(frozen=True)
class StopNetwork(Operation):
    name: str

    def run(self, rt: Runtime) -> None:
        rt.handle("network", self.name).destroy()

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh net-destroy {q(self.name)}"]


@dataclass(frozen=True)
class UndefineNetwork(Operation):
    name: str

    def run(self, rt: Runtime) -> None:
        rt.handle("network", self.name).undefine()

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh net-undefine {q(self.name)}"]


@dataclass(frozen=True)
class NetworkAutostart(Operation):
    name: str
    on: bool

    def run(self, rt: Runtime) -> None:
        rt.handle("network", self.name).setAutostart(1 if self.on else 0)

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh net-autostart {'' if self.on else '--disable '}{q(self.name)}"]


@dataclass(frozen=True)
class UpdateDhcpHost(Operation):
    """Add or delete one DHCP reservation in the persistent config, and in the running
    network when `live`. The running network may differ from the config (edited on its
    own): the run form tolerates an entry already gone or already there."""

    network: str
    command: str  # "add-last" | "delete"
    mac: str
    ip: str
    hostname: str | None
    live: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        net = rt.handle("network", self.network)
        command = {"add-last": libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                   "delete": libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE}[self.command]  # fmt: skip
        section, xml = libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, self.xml()
        net.update(command, section, -1, xml, libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)
        if self.live:
            try:
                net.update(command, section, -1, xml, libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_OPERATION_FAILED):
                    raise

    def shell(self, ctx: Context) -> list[str]:
        flags = "--config --live" if self.live else "--config"
        return [f"virsh net-update {q(self.network)} {self.command} ip-dhcp-host {q(self.xml())} {flags}"]

    def xml(self) -> str:
        return dhcp_host(self.mac, self.ip, self.hostname)


def reservation_updates(network: str, before: list[dict[str, Any]], after: list[dict[str, Any]],
                        live: bool) -> Iterator[UpdateDhcpHost]:  # fmt: skip
    """Turn the reservations `before` into `after`: deletions first, then additions."""
    for r in before:
        if r not in after:
            yield UpdateDhcpHost(network, "delete", r["mac"], r["ip"], r.get("name"), live)
    for r in after:
        if r not in before:
            yield UpdateDhcpHost(network, "add-last", r["mac"], r["ip"], r.get("name"), live)


# -- steps ------------------------------------------------------------------------------------
def create(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    net: Network = ctx.resource(change)
    yield ChooseUuid(change.address)
    yield DefineNetwork(net)
    if net.autostart:
        yield NetworkAutostart(net.name, True)
    yield StartNetwork(net.name, undefine_on_failure=True)
    yield Recorded(change)


def rename(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    """A renamed network (renamed_from): libvirt cannot rename one, so the old definition
    goes and the new one comes with the same UUID (the renderer keeps it), then starts; the
    running guests' NICs are re-plugged by their own changes after this one."""
    net: Network = ctx.resource(change)
    assert change.moved_from is not None
    obj = ctx.host.get("network", change.moved_from)
    if obj is not None and obj.spec.get("active"):
        yield StopNetwork(change.moved_from)
    yield UndefineNetwork(change.moved_from)
    yield Forget(f"{ctx.host.name}/network/{change.moved_from}")
    yield DefineNetwork(net)
    yield NetworkAutostart(net.name, net.autostart)
    yield StartNetwork(net.name)
    yield Recorded(change)


def update(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    """In place: reservations through net-update (running network too), autostart, start.
    Other fields are updated only on an inactive network (else the plan restarts it), by a
    new definition, which carries the reservations as well."""
    if change.reason == Reason.RENAMED:
        yield from rename(change, ctx)
        return
    net: Network = ctx.resource(change)
    obj = ctx.observed(change)
    active = bool(obj and obj.spec.get("active"))
    fields = {fc.field: fc for fc in change.changes}
    if redefines("network", fields):
        yield DefineNetwork(net)
    elif "reservations" in fields:
        yield from reservation_updates(net.name, fields["reservations"].before or [],
                                       fields["reservations"].after or [], live=active)  # fmt: skip
    if "autostart" in fields:
        yield NetworkAutostart(net.name, bool(fields["autostart"].after))
    if "active" in fields and fields["active"].after and not active:
        yield StartNetwork(net.name)
    yield Recorded(change)


def restart(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    if change.reason == Reason.RENAMED:
        yield from rename(change, ctx)
        return
    net: Network = ctx.resource(change)
    obj = ctx.observed(change)
    yield DefineNetwork(net)
    if obj is not None and obj.spec.get("active"):
        yield StopNetwork(net.name)
    yield StartNetwork(net.name)
    yield NetworkAutostart(net.name, net.autostart)
    yield Recorded(change)


def replace(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    yield from delete(change, ctx)
    yield ForgetIdentity(change.address)
    yield from create(change, ctx)


def delete(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    obj = ctx.observed(change)
    if obj is not None and obj.spec.get("active"):
        yield StopNetwork(change.key)
    yield UndefineNetwork(change.key)
    yield Forget(change.address)
