"""Every piece of XML virtplan writes outside the templates, in one place.

Small documents (a volume to upload into, a DHCP host entry, a snapshot request, an owner
mark) are built by `element`, which escapes every attribute value and text, and edits of
existing documents (a disk's copy-on-write chain, an owner mark in a network) go through
ElementTree; so no user string (a name, a description, a path) can inject markup. Apply,
the virsh view, snapshots, layers and import all take their XML from here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

from virtplan.documents.render import NAMESPACE

ET.register_namespace("virtplan", NAMESPACE)
LAYER_FORMAT = "qcow2"
_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;",
                       "\t": "&#9;"})  # fmt: skip
_TEXT = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def element(tag: str, attrs: Mapping[str, object] | None = None, *children: str, text: object = None) -> str:
    """`<tag a="v">text children</tag>` (or `<tag a="v"/>`), every value escaped; `children`
    are fragments made by this function."""
    head = tag + "".join(f' {k}="{str(v).translate(_ATTR)}"' for k, v in (attrs or {}).items())
    body = ("" if text is None else str(text).translate(_TEXT)) + "".join(children)
    return f"<{head}>{body}</{tag}>" if body else f"<{head}/>"


# -- storage --------------------------------------------------------------------------------
def volume(name: str, capacity: int, fmt: str, backing: str | None = None, backing_format: str | None = None) -> str:
    """A storage volume of `capacity` bytes, optionally a copy-on-write overlay on `backing`."""
    parts = [
        element("name", text=name),
        element("capacity", {"unit": "bytes"}, text=capacity),
        element("target", None, element("format", {"type": fmt})),
    ]
    if backing is not None:
        chain = [element("path", text=backing), element("format", {"type": backing_format or "raw"})]
        parts.append(element("backingStore", None, *chain))
    return element("volume", None, *parts)


def layer_volume(name: str, capacity: int, backing: str, backing_format: str) -> str:
    """A copy-on-write layer (qcow2) on the frozen file `backing`."""
    return volume(name, capacity, LAYER_FORMAT, backing, backing_format)


# -- networks -------------------------------------------------------------------------------
def dhcp_host(mac: str, ip: str, name: str | None = None) -> str:
    """A network's DHCP reservation, as `virNetworkUpdate` (and `virsh net-update`) take it."""
    attrs = {"mac": mac, **({"name": name} if name else {}), "ip": ip}
    return element("host", attrs)


def replug_interfaces(interface: ET.Element, network: str, bridge: str) -> tuple[str, str]:
    """The two `virDomainUpdateDeviceFlags` documents that put a running guest's NIC (its
    `interface` element, live or persistent) back on `network`, whose bridge is `bridge`:
    first the NIC as a plain bridge NIC on that bridge (libvirt moves the tap there: it only
    moves taps when the bridge's name changes), then as a NIC of the network again (libvirt
    gives it a port of the network; the tap stays). Only the MAC, model and PCI address are
    kept: libvirt finds the NIC by them and keeps everything else."""
    kept = [ET.tostring(el, encoding="unicode").strip() for tag in ("mac", "model", "address")
            for el in interface.findall(tag)]  # fmt: skip
    on_bridge = element("interface", {"type": "bridge"}, element("source", {"bridge": bridge}), *kept)
    on_network = element("interface", {"type": "network"}, element("source", {"network": network}), *kept)
    return on_bridge, on_network


def owner_attrs(stack: str, project: str, address: str, **extra: object) -> dict[str, object]:
    """virtplan's owner mark's attributes, in the order the templates write them."""
    return {"stack": stack, **({"project": project} if project else {}), "address": address, **extra}


def with_owner(xml: str, attrs: Mapping[str, object]) -> str:
    """A domain's or network's XML carrying virtplan's owner mark `attrs` (replacing any old
    mark); for networks, whose metadata libvirt 9.0 can only change by redefining them."""
    root = ET.fromstring(xml)
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        names = [i for i, el in enumerate(root) if el.tag in ("name", "uuid")]
        root.insert(names[-1] + 1 if names else 0, meta)
    for old in meta.findall(f"{{{NAMESPACE}}}owner"):
        meta.remove(old)
    ET.SubElement(meta, f"{{{NAMESPACE}}}owner", {k: str(v) for k, v in attrs.items()})
    return ET.tostring(root, encoding="unicode")


def records_pool(name: str, path: str) -> str:
    """The `dir` storage pool where virtplan keeps its records on a host."""
    return element(
        "pool", {"type": "dir"}, element("name", text=name), element("target", None, element("path", text=path))
    )


# -- domains --------------------------------------------------------------------------------
def owner_mark(attrs: Mapping[str, object]) -> str:
    """virtplan's owner mark for a domain's <metadata> (`virDomainSetMetadata` adds the namespace)."""
    return element("owner", attrs)


def memory_snapshot(name: str, description: str) -> str:
    """A request for libvirt's internal snapshot (disks and memory) of a running domain."""
    return element("domainsnapshot", None, element("name", text=name), element("description", text=description))


def external_disk_snapshot(disks: list[tuple[str, str | None]]) -> str:
    """A disk-only snapshot request: each (target, new top file) switches that disk to the
    pre-made layer; a target with None is left out of the snapshot."""
    parts = []
    for dev, top in disks:
        if top is None:
            parts.append(element("disk", {"name": dev, "snapshot": "no"}))
        else:
            inner = (element("driver", {"type": LAYER_FORMAT}), element("source", {"file": top}))
            parts.append(element("disk", {"name": dev, "snapshot": "external", "type": "file"}, *inner))
    return element("domainsnapshot", None, element("disks", None, *parts))


def layer_disk(disk: ET.Element, chain: list[str], volume_key: str, base_format: str) -> None:
    """Rewrite one <disk> element in place: its source is chain[0] (the top layer), with the
    backing chain down to the declared volume `volume_key` ("pool/name")."""
    pool, _, name = volume_key.partition("/")
    at = _bare_disk(disk, "file", LAYER_FORMAT)
    disk.insert(at, ET.Element("source", {"file": chain[0]}))
    parent = ET.Element("backingStore", {"type": "file"})
    disk.insert(at + 1, parent)
    node = parent
    for path in chain[1:]:
        ET.SubElement(node, "format", {"type": LAYER_FORMAT})
        ET.SubElement(node, "source", {"file": path})
        node = ET.SubElement(node, "backingStore", {"type": "file"})
    node.set("type", "volume")
    ET.SubElement(node, "format", {"type": base_format})
    ET.SubElement(node, "source", {"pool": pool, "volume": name})


def unlayer_disk(disk: ET.Element, volume_key: str, base_format: str) -> None:
    """Rewrite one <disk> element in place: the declared volume `volume_key` itself again
    (its layers were merged back into it)."""
    pool, _, name = volume_key.partition("/")
    disk.insert(_bare_disk(disk, "volume", base_format), ET.Element("source", {"pool": pool, "volume": name}))


def _bare_disk(disk: ET.Element, disk_type: str, image_format: str) -> int:
    """Strip a <disk> of its source and backing chain, set its type and its driver's image
    format; returns where its new <source> goes (right after the driver)."""
    for tag in ("source", "backingStore"):
        for el in disk.findall(tag):
            disk.remove(el)
    disk.set("type", disk_type)
    driver = disk.find("driver")
    if driver is None:
        driver = ET.Element("driver", {"name": "qemu"})
        disk.insert(0, driver)
    driver.set("type", image_format)
    return list(disk).index(driver) + 1


def domain_with_disk(disk: ET.Element) -> str:
    """A minimal domain document holding one <disk> (for the readers of a domain's disks)."""
    root = ET.Element("domain")
    ET.SubElement(root, "devices").append(disk)
    return ET.tostring(root, encoding="unicode")
