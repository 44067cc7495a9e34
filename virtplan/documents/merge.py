"""Keep what libvirt assigned when virtplan redefines an object.

A redefinition renders fresh XML from the stack; copying each existing device's
<address> (and the UUID) into it keeps PCI slots stable, so guests see the same
hardware across updates.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

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


# -- what virtplan does not model survives a redefinition ----------------------------------------
#: Top-level domain elements the stack decides (rendered from it; absent means "none").
_MODELED_TOP = {"name", "uuid", "description", "memory", "currentMemory", "vcpu"}
#: <os> children the stack decides.
_MODELED_OS = {"type", "kernel", "initrd", "cmdline"}
#: Devices the stack decides (its disks, NICs, serial console and graphics).
_MODELED_DEVICES = {"disk", "interface", "serial", "console", "graphics"}


@dataclass
class Kept:
    """What a redefinition keeps from the current definition, and what it drops."""

    kept: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def keep_unmodelled(new_xml: str, old_xml: str, report: Kept | None = None) -> str:
    """`new_xml` (rendered from the stack) with what the stack does not model taken from
    `old_xml` (the current definition): the CPU model, clock and timers, power management,
    lifecycle actions, other top-level settings, extra features and <os> settings (boot
    devices unless a disk has a boot order, firmware files while the firmware kind is
    unchanged), foreign <metadata>, and every device other than disks, NICs, the serial
    console and graphics (controllers, channels, inputs, sound, RNG, USB redirection,
    watchdogs, host devices, ...). What is kept and dropped is described in `report`."""
    new, old = ET.fromstring(new_xml), ET.fromstring(old_xml)
    report = report if report is not None else Kept()
    same_machine = _machine_family(new) in (None, _machine_family(old))
    for el in old:
        if el.tag in _MODELED_TOP:
            continue
        if (
            el.tag == "cpu"
            and el.get("mode") in ("host-passthrough", "host-model")
            and new.get("type") != old.get("type")
        ):
            report.dropped.append(f"{describe(el)} (the domain type changes to {new.get('type')})")
            continue
        if el.tag == "os":
            _merge_os(new, el, report)
        elif el.tag == "features":
            _merge_features(new, el, report)
        elif el.tag == "metadata":
            _merge_metadata(new, el)
        elif el.tag == "devices":
            if same_machine:
                _merge_devices(new, el, report)
            else:
                report.dropped.append("devices virtplan does not model (the machine type changes)")
        else:  # not rendered from the stack, or rendered with fixed values (clock, on_reboot, ...)
            current = new.find(el.tag)
            if current is not None:
                if ET.tostring(current) == ET.tostring(el):
                    continue
                new.remove(current)
            new.insert(_position(new, el.tag), el)
            report.kept.append(describe(el))
    return ET.tostring(new, encoding="unicode")


def redefinition(new_xml: str, old_xml: str, report: Kept | None = None) -> str:
    """The definition to write when virtplan redefines a domain: `new_xml` rendered from
    the stack, keeping the device addresses (while the machine type stays) and what the
    stack does not model from the current definition `old_xml`."""
    new, old = ET.fromstring(new_xml), ET.fromstring(old_xml)
    if _machine_family(new) in (None, _machine_family(old)):
        new_xml = keep_device_addresses(new_xml, old_xml)
    return keep_unmodelled(new_xml, old_xml, report)


def _machine_family(root: ET.Element) -> str | None:
    """q35 or pc (i440fx), from <os><type machine=...>; None when not given."""
    machine = root.find("os/type")
    name = machine.get("machine") if machine is not None else None
    if not name:
        return None
    return "q35" if "q35" in name else name.split("-")[0]


def _position(root: ET.Element, tag: str) -> int:
    """Where a top-level element goes: before <devices> (libvirt does not mind the order)."""
    for i, el in enumerate(root):
        if el.tag == "devices":
            return i
    return len(root)


def _merge_os(new: ET.Element, old_os: ET.Element, report: Kept) -> None:
    new_os = new.find("os")
    if new_os is None:
        return
    ordered = any(d.find("boot") is not None for d in new.iterfind("devices/*"))
    new_efi = new_os.get("firmware") == "efi" or new_os.find("loader[@type='pflash']") is not None
    old_efi = old_os.get("firmware") == "efi" or old_os.find("loader[@type='pflash']") is not None
    had = {el.tag for el in new_os}
    for el in old_os:
        if el.tag in _MODELED_OS or el.tag in had - {"boot"}:
            continue
        if el.tag == "boot" and (ordered or "boot" in had):
            if ordered:
                report.dropped.append(f"{describe(el)} (the stack gives disks a boot order)")
            continue
        if el.tag in ("loader", "nvram") and new_efi != old_efi:
            report.dropped.append(f"os {el.tag} (the firmware changes)")
            continue
        new_os.append(el)
        report.kept.append(describe(el))


def _merge_features(new: ET.Element, old_features: ET.Element, report: Kept) -> None:
    features = new.find("features")
    if features is None:
        features = ET.Element("features")
        new.insert(_position(new, "features"), features)
    have = {f.tag for f in features}
    extra = [f for f in old_features if f.tag not in have]
    for f in extra:
        features.append(f)
    if extra:
        report.kept.append("features " + ", ".join(f.tag for f in extra))


def _merge_metadata(new: ET.Element, old_meta: ET.Element) -> None:
    from virtplan.documents.render import NAMESPACE

    meta = new.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        new.insert(_position(new, "metadata"), meta)
    for child in old_meta:
        if not child.tag.startswith(f"{{{NAMESPACE}}}"):  # other tools' metadata stays theirs
            meta.append(child)


def _merge_devices(new: ET.Element, old_devices: ET.Element, report: Kept) -> None:
    devices = new.find("devices")
    if devices is None:
        return
    controllers = {(c.get("type"), c.get("index", "0")) for c in devices.iterfind("controller")}
    kept: list[str] = []
    for dev in old_devices:
        if dev.tag in _MODELED_DEVICES:
            continue
        if dev.tag == "controller" and (dev.get("type"), dev.get("index", "0")) in controllers:
            continue
        if dev.tag in ("video", "memballoon", "emulator") and devices.find(dev.tag) is not None:
            if dev.tag == "video":
                continue
            devices.remove(devices.find(dev.tag))  # type: ignore[arg-type]
        devices.append(dev)
        if describe(dev) not in _IMPLICIT:
            kept.append(describe(dev))
    report.kept += kept


#: Devices libvirt adds to every domain by itself: kept, but not worth a mention.
_IMPLICIT = {"emulator", "memballoon", "controller pci pci-root", "controller pci pcie-root", "input mouse ps2",
             "input keyboard ps2"}  # fmt: skip


def describe(el: ET.Element) -> str:
    """A short reading of a domain element: `cpu host-passthrough`, `controller usb ich9-ehci1`,
    `clock utc (timers rtc/pit/hpet)`."""
    tag = el.tag
    if tag == "cpu":
        return f"cpu {el.get('mode', 'custom')}" + (f" {el.findtext('model')}" if el.findtext("model") else "")
    if tag == "clock":
        timers = [t.get("name", "") for t in el.iterfind("timer")]
        return f"clock {el.get('offset', 'utc')}" + (f" (timers {'/'.join(timers)})" if timers else "")
    if tag == "boot":
        return f"os boot dev={el.get('dev')}"
    if tag in ("controller", "input", "channel", "redirdev", "sound", "audio", "rng", "watchdog", "hostdev"):
        parts = [el.get("type"), el.get("model"), el.get("bus") if tag == "input" else None]
        target = el.find("target")
        if tag == "channel" and target is not None:
            parts.append(target.get("name"))
        return " ".join([tag, *[p for p in parts if p]])
    if tag == "video":
        model = el.find("model")
        return f"video {model.get('type')}" if model is not None else "video"
    if tag.startswith("on_"):
        return f"{tag} {el.text or ''}".strip()
    return tag
