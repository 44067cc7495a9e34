"""Keep what libvirt assigned when virtplan redefines an object.

A redefinition renders fresh XML from the stack; copying each existing device's
<address> (and the UUID) into it keeps PCI slots stable, so guests see the same
hardware across updates.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from virtplan.documents.render import NAMESPACE

ET.register_namespace("virtplan", NAMESPACE)


def _device_key(el: ET.Element, nth: dict[str, int]) -> tuple[str, ...]:
    tag = el.tag
    if tag == "disk":
        target = el.find("target")
        return (tag, target.get("dev", "") if target is not None else "")
    if tag == "interface":
        mac = el.find("mac")
        return (tag, mac.get("address", "").lower() if mac is not None else "")
    if tag == "controller":
        return (tag, el.get("type", ""), el.get("index", "0"))
    n = nth.get(tag, 0)
    nth[tag] = n + 1
    return (tag, str(n))


def keep_device_addresses(new_xml: str, old_xml: str) -> str:
    """`new_xml` with each device's <address> taken from the matching device of `old_xml`
    (as it is when `old_xml` does not parse: libvirt can store such a definition)."""
    try:
        old = ET.fromstring(old_xml)
    except ET.ParseError:
        return new_xml
    new = ET.fromstring(new_xml)
    old_devices = old.find("devices")
    new_devices = new.find("devices")
    if old_devices is None or new_devices is None:
        return new_xml
    nth: dict[str, int] = {}
    addresses = {}
    for dev in old_devices:
        address = dev.find("address")
        key = _device_key(dev, nth)
        if address is not None:
            addresses[key] = address
    nth = {}
    for dev in new_devices:
        key = _device_key(dev, nth)
        if dev.find("address") is None and key in addresses:
            dev.append(addresses[key])
    return ET.tostring(new, encoding="unicode")


def device_xml(domain_xml: str, tag: str, match: str) -> str:
    """One device element of a domain (disk by target dev, interface by MAC) as XML."""
    root = ET.fromstring(domain_xml)
    for dev in root.iterfind(f"devices/{tag}"):
        if _device_key(dev, {})[1] == match:
            return ET.tostring(dev, encoding="unicode")
    raise KeyError(f"{tag} {match}")
