"""Host facts read from libvirt's capabilities XML: what guests a host can run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field


class HostCannot(ValueError):
    """A declared value the host cannot run: `field` names it ("arch", "machine", ...)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class GuestArch:
    """One architecture a host can run: its emulator, machine aliases and domain types."""

    arch: str
    domain_types: tuple[str, ...]
    machines: tuple[str, ...]
    aliases: dict[str, str] = field(default_factory=dict)  # alias -> canonical
    default_machine: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """What a host offers, used to fill the defaults a stack did not pin."""

    host_arch: str
    guests: dict[str, GuestArch]

    def guest(self, arch: str | None) -> GuestArch:
        """The guest for `arch` (default: the host's own), or a ValueError naming the options."""
        wanted = arch or self.host_arch
        if wanted not in self.guests:
            if arch is None and self.guests:
                return next(iter(self.guests.values()))
            raise HostCannot("arch", f"host cannot run arch {wanted!r}; it offers {', '.join(self.guests) or 'none'}")
        return self.guests[wanted]

    def domain_type(self, declared: str | None, arch: str | None = None) -> str:
        """The declared type, else kvm when offered, else qemu, else what the driver has."""
        offered = self.guest(arch).domain_types
        if offered == ("test",):
            return "test"  # libvirt's in-process test driver stands in for any hypervisor
        if declared:
            if declared not in offered:
                raise HostCannot(
                    "domain_type", f"host does not offer domain type {declared!r} (it offers {', '.join(offered)})"
                )
            return declared
        for preferred in ("kvm", "qemu"):
            if preferred in offered:
                return preferred
        return offered[0]

    def machine(self, declared: str | None, arch: str | None = None) -> str:
        """The canonical machine type for `declared` (alias resolved) or the default one."""
        guest = self.guest(arch)
        if declared is None:
            return guest.default_machine or (guest.machines[0] if guest.machines else "pc")
        if declared in guest.aliases:
            return guest.aliases[declared]
        if guest.machines and declared not in guest.machines:
            known = ", ".join(sorted(guest.machines)[:12]) + (", ..." if len(guest.machines) > 12 else "")
            raise HostCannot(
                "machine", f"host does not offer machine type {declared!r} for {guest.arch} (it offers {known})"
            )
        return declared


def parse_capabilities(xml: str) -> HostFacts:
    """Parse `virConnectGetCapabilities()` output."""
    root = ET.fromstring(xml)
    host_arch = root.findtext("host/cpu/arch") or "x86_64"
    guests: dict[str, GuestArch] = {}
    for guest in root.findall("guest"):
        if guest.findtext("os_type") != "hvm":
            continue
        arch_el = guest.find("arch")
        if arch_el is None:
            continue
        arch = arch_el.get("name", "")
        machines: list[str] = []
        aliases: dict[str, str] = {}
        for m in arch_el.findall("machine"):
            name = (m.text or "").strip()
            machines.append(name)
            if m.get("canonical"):
                aliases[name] = m.get("canonical", "")
        types = tuple(d.get("type", "") for d in arch_el.findall("domain"))
        default = aliases.get("pc") or (machines[0] if machines else None)
        if arch in guests:  # some drivers list an arch twice; merge
            old = guests[arch]
            types = tuple(dict.fromkeys(old.domain_types + types))
            machines = list(dict.fromkeys([*old.machines, *machines]))
            aliases = {**old.aliases, **aliases}
        guests[arch] = GuestArch(arch, types, tuple(machines), aliases, default)
    return HostFacts(host_arch, guests)
