"""A running VM's live changes: memory, vCPUs and the description set on the guest and/or
its definition, and disks and NICs hot-plugged."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.shell import file_name, heredoc, q
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
