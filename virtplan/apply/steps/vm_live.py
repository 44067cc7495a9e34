"""A running VM's live changes: memory, vCPUs and the description set on the guest and/or
its definition, disks and NICs hot-plugged, NICs re-plugged into their network."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.shell import file_name, heredoc, q
from virtplan.documents.fragments import replug_interfaces
from virtplan.documents.parse import layered_volume
from virtplan.errors import VirtplanError
from virtplan.model import VM


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


@dataclass(frozen=True)
class ReplugNic(Operation):
    """Put a running guest's NIC (by MAC) back on its network's bridge, live, after the
    network restarted under it (libvirt dropped its port and left the tap on no bridge):
    two `virDomainUpdateDeviceFlags` calls (see `fragments.replug_interfaces`). The guest
    keeps its NIC, MAC and address; its definition does not change.

    The run form reads the NIC from the live definition and the bridge from the network as
    it runs now; the shell form takes both from the plan."""

    vm: str
    mac: str
    network: str
    bridge: str
    config_xml: str  # the domain's persistent definition as the plan observed it

    def run(self, rt: Runtime) -> None:
        import libvirt

        dom = rt.handle("vm", self.vm)
        if not dom.isActive():
            return  # stopped meanwhile: it is plugged afresh when it starts
        iface = self.interface(dom.XMLDesc(0))
        bridge = rt.conn.networkLookupByName(self.network).bridgeName()
        for doc in replug_interfaces(iface, self.network, bridge):
            dom.updateDeviceFlags(doc, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def shell(self, ctx: Context) -> list[str]:
        on_bridge, on_network = replug_interfaces(self.interface(self.config_xml), self.network, self.bridge)
        first, second = (file_name("nic", self.vm, self.mac, step) + ".xml" for step in ("bridge", "network"))
        return [
            f"# re-plug NIC {self.mac} of {self.vm} into network {self.network}: onto its bridge, then its network",
            heredoc(first, on_bridge), f"virsh update-device {q(self.vm)} {q(first)} --live",
            heredoc(second, on_network), f"virsh update-device {q(self.vm)} {q(second)} --live",
        ]  # fmt: skip

    def interface(self, domain_xml: str) -> ET.Element:
        for dev in ET.fromstring(domain_xml).iterfind("devices/interface"):
            mac = dev.find("mac")
            if mac is not None and mac.get("address", "").lower() == self.mac:
                return dev
        raise KeyError(f"{self.vm} has no NIC {self.mac}")


class NotReleased(VirtplanError):
    """A running guest did not let go of a device asked to be hot-unplugged."""


@dataclass(frozen=True)
class DetachDisk(Operation):
    """Hot-unplug a data disk (by its volume "pool/name") from the running guest, before its
    definition drops it. Unplugging needs the guest's cooperation (a running OS with ACPI
    PCI hot-plug: libvirt asks, the guest lets go): the run form waits up to `timeout`
    seconds for the disk to leave the guest, else fails saying why, with the definition
    unchanged (a later apply finds it gone if the guest let go meanwhile)."""

    vm: str
    volume: str
    config_xml: str  # the domain's persistent definition as the plan observed it
    timeout: float = 20.0

    def run(self, rt: Runtime) -> None:
        import libvirt

        dom = rt.handle("vm", self.vm)
        if not dom.isActive() or (disk := self.disk(dom.XMLDesc(0))) is None:
            return  # stopped meanwhile, or released since an earlier request
        rt.say(
            f"waiting up to {self.timeout:g} s for the guest in {self.vm} to release disk {self.volume} (hot-unplug)"
        )
        dom.detachDeviceFlags(ET.tostring(disk, encoding="unicode"), libvirt.VIR_DOMAIN_AFFECT_LIVE)
        deadline = time.monotonic() + self.timeout
        while self.disk(dom.XMLDesc(0)) is not None:
            if time.monotonic() > deadline:
                raise NotReleased(
                    f"the guest in {self.vm} did not release disk {self.volume} within {self.timeout:g} s: hot-unplug "
                    "needs a running OS that handles ACPI PCI hot-plug (a blank, booting or hung guest does not). "
                    "Nothing else was changed; stop the VM (state='stopped') and apply, or apply again once it runs"
                )
            time.sleep(0.2)

    def shell(self, ctx: Context) -> list[str]:
        disk = self.disk(self.config_xml)
        if disk is None:
            return []
        path = file_name("disk", self.vm, self.volume) + ".xml"
        return [
            heredoc(path, ET.tostring(disk, encoding="unicode")),
            f"virsh detach-device {q(self.vm)} {q(path)} --live",
        ]

    def disk(self, domain_xml: str) -> ET.Element | None:
        for dev in ET.fromstring(domain_xml).iterfind("devices/disk"):
            src = dev.find("source")
            if src is not None and f"{src.get('pool')}/{src.get('volume')}" == self.volume:
                return dev
            if layered_volume(dev) == self.volume:
                return dev
        return None
