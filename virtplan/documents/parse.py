"""Parse libvirt XML into the comparable specs the planner diffs (`virtplan.documents.specs`).

The same parsers read what virtplan rendered and what libvirt returns, so a field means
the same on both sides. Only fields virtplan manages are extracted: libvirt's own
defaults, aliases and PCI addresses never appear here and so are never drift.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field

from virtplan.documents.render import NAMESPACE
from virtplan.documents.specs import (
    DiskSpec,
    GraphicsSpec,
    KindSpec,
    NetworkSpec,
    NicSpec,
    PoolSpec,
    ReservationSpec,
    Spec,
    VMSpec,
    VolumeSpec,
    generic,
)

__all__ = [  # Spec too: callers that handle every kind import it from here or from specs
    "PARSERS", "Owner", "Spec", "layered_volume", "owner_of",
    "parse", "parse_domain", "parse_network", "parse_pool", "parse_volume",
]  # fmt: skip
_UNIT = {"b": 1, "bytes": 1, "kib": 1024, "k": 1024, "mib": 1024**2, "m": 1024**2, "gib": 1024**3, "g": 1024**3,
         "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tib": 1024**4, "t": 1024**4, "tb": 1000**4}  # fmt: skip

#: Where a VNC/SPICE console listens when its XML names no address (`<listen type='address'/>`,
#: as virt-install writes it): qemu.conf's default vnc_listen/spice_listen.
DEFAULT_LISTEN = "127.0.0.1"


@dataclass(frozen=True)
class Owner:
    """virtplan's ownership mark in an object's <metadata>."""

    stack: str
    address: str
    attrs: dict[str, str] = field(default_factory=dict)


def owner_of(root: ET.Element) -> Owner | None:
    """The virtplan owner mark of a parsed domain or network, if any."""
    el = root.find(f"metadata/{{{NAMESPACE}}}owner")
    if el is None:
        return None
    return Owner(el.get("stack", ""), el.get("address", ""), dict(el.attrib))


def _size(el: ET.Element | None, default_unit: str = "KiB") -> int | None:
    if el is None or el.text is None:
        return None
    return int(el.text) * _UNIT[el.get("unit", default_unit).lower()]


def parse_domain(root: ET.Element) -> VMSpec:
    """The spec of a domain's XML (persistent config; observe adds the runtime state)."""
    owner = owner_of(root)
    attrs = owner.attrs if owner else {}
    seed_volume = attrs.get("seed-volume")
    os_el = root.find("os")
    type_el = os_el.find("type") if os_el is not None else None
    vcpu_el = root.find("vcpu")
    max_vcpus = int(vcpu_el.text or 1) if vcpu_el is not None else 1
    memory = _size(root.find("memory"))
    disks: list[DiskSpec] = []
    for disk in root.findall("devices/disk"):
        source = disk.find("source")
        target = disk.find("target")
        boot = disk.find("boot")
        volume = None
        if source is not None:
            if source.get("pool"):
                volume = f"{source.get('pool')}/{source.get('volume')}"
            else:
                volume = layered_volume(disk) or source.get("file") or source.get("dev")
        if disk.get("device") == "cdrom" and seed_volume is not None and volume == seed_volume:
            continue
        disks.append({
            "volume": volume,
            "device": disk.get("device", "disk"),
            "bus": target.get("bus") if target is not None else None,
            "boot": int(boot.get("order", 0)) if boot is not None else None,
        })  # fmt: skip
    nics: list[NicSpec] = []
    for iface in root.findall("devices/interface"):
        source = iface.find("source")
        mac = iface.find("mac")
        model = iface.find("model")
        kind = iface.get("type")
        nics.append({
            "network": source.get("network") if source is not None and kind == "network" else None,
            "bridge": source.get("bridge") if source is not None and kind == "bridge" else None,
            "model": model.get("type") if model is not None else None,
            "mac": mac.get("address", "").lower() if mac is not None else None,
        })  # fmt: skip
    graphics_el = root.find("devices/graphics")
    graphics: GraphicsSpec | None = None
    if graphics_el is not None:
        listen_el = graphics_el.find("listen")
        listen = graphics_el.get("listen") or (listen_el.get("address") if listen_el is not None else None)
        if listen is None and (listen_el is None or listen_el.get("type", "address") == "address"):
            listen = DEFAULT_LISTEN  # no address given: libvirt's default (qemu.conf vnc_listen/spice_listen)
        graphics = {"type": graphics_el.get("type"), "listen": listen, "password": attrs.get("graphics-password")}
    firmware = "bios"
    if os_el is not None and (os_el.get("firmware") == "efi" or os_el.find("loader[@type='pflash']") is not None):
        firmware = "uefi"
    return {
        "type": root.get("type"),
        "arch": type_el.get("arch") if type_el is not None else None,
        "machine": type_el.get("machine") if type_el is not None else None,
        "vcpus": int(vcpu_el.get("current", max_vcpus)) if vcpu_el is not None else 1,
        "max_vcpus": max_vcpus,
        "memory": _size(root.find("currentMemory")) or memory,
        "max_memory": memory,
        "firmware": firmware,
        "disks": disks,
        "nics": nics,
        "cloud_init": attrs.get("cloud-init"),
        "graphics": graphics,
        "serial": root.find("devices/serial") is not None,
        "description": root.findtext("description") or "",
        "kernel": os_el.findtext("kernel") if os_el is not None else None,
        "initrd": os_el.findtext("initrd") if os_el is not None else None,
        "cmdline": os_el.findtext("cmdline") if os_el is not None else None,
        "console_log": _console_log(root),
    }


def _console_log(root: ET.Element) -> str | None:
    log = root.find("devices/serial/log")
    return log.get("file") if log is not None else None


def layered_volume(disk: ET.Element) -> str | None:
    """For a disk whose active image is a copy-on-write layer on a pool volume (a frozen
    disk: snapshots, clones), that volume as "pool/volume": the first volume in the chain."""
    chain = disk.find("backingStore")
    while chain is not None:
        source = chain.find("source")
        if chain.get("type") == "volume" and source is not None and source.get("pool"):
            return f"{source.get('pool')}/{source.get('volume')}"
        chain = chain.find("backingStore")
    return None


def parse_network(root: ET.Element) -> NetworkSpec:
    """The spec of a network's XML."""
    forward = root.find("forward")
    mode = forward.get("mode", "nat") if forward is not None else "isolated"
    bridge = root.find("bridge")
    domain = root.find("domain")
    spec: NetworkSpec = {
        "mode": mode,
        "bridge": bridge.get("name") if bridge is not None else None,
        "domain": domain.get("name") if domain is not None else None,
        "cidr": None,
        "gateway": None,
        "dhcp": False,
        "dhcp_range": None,
        "reservations": [],
    }
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        prefix = ip.get("prefix") or ip.get("netmask") or "24"
        iface = ipaddress.IPv4Interface(f"{ip.get('address')}/{prefix}")
        spec["cidr"] = str(iface.network)
        spec["gateway"] = str(iface.ip)
        dhcp = ip.find("dhcp")
        if dhcp is not None:
            spec["dhcp"] = True
            rng = dhcp.find("range")
            if rng is not None:
                spec["dhcp_range"] = f"{rng.get('start')}-{rng.get('end')}"
            spec["reservations"] = sorted(
                (
                    ReservationSpec(mac=(h.get("mac") or "").lower(), ip=h.get("ip"), name=h.get("name"))
                    for h in dhcp.findall("host")
                ),
                key=lambda r: r["mac"],
            )
        break
    return spec


def parse_pool(root: ET.Element) -> PoolSpec:
    """The spec of a storage pool's XML."""
    return {"type": root.get("type"), "path": root.findtext("target/path")}


def parse_volume(root: ET.Element) -> VolumeSpec:
    """The spec of a storage volume's XML."""
    fmt = root.find("target/format")
    backing = root.findtext("backingStore/path")
    return {
        "format": fmt.get("type") if fmt is not None else "raw",
        "capacity": _size(root.find("capacity"), "bytes"),
        "backing": backing or None,
    }


#: The parser of each kind that has an XML document.
PARSERS: dict[str, Callable[[ET.Element], KindSpec]] = {
    "vm": parse_domain, "network": parse_network, "pool": parse_pool, "volume": parse_volume,
}  # fmt: skip


def parse(kind: str, xml: str) -> Spec:
    """The spec of one document of `kind` (vm, network, pool, volume), in the generic form."""
    return generic(PARSERS[kind](ET.fromstring(xml)))
