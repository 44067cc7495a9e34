"""Declared values only a host can judge, checked when planning (never found out mid-apply):
UEFI firmware for a VM's architecture and machine, and the host bridges NICs and bridge
networks attach to. The architecture, machine type and domain type are checked against the
host's capabilities when the domain is rendered (`virtplan.documents.capabilities`).

Read-only. A host whose driver cannot answer a question (libvirt's test driver has no
domain capabilities) is not judged on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtplan.documents.capabilities import HostFacts
from virtplan.errors import FieldError
from virtplan.model import NIC, Stack


def host_problems(conn: Any, stack: Stack, host: str, facts: HostFacts) -> list[FieldError]:
    """What the stack declares for `host` that the host cannot do."""
    return _firmware(conn, stack, host, facts) + _bridges(conn, stack, host)


def _firmware(conn: Any, stack: Stack, host: str, facts: HostFacts) -> list[FieldError]:
    import libvirt

    problems = []
    answers: dict[tuple[str, str, str], bool | None] = {}
    for vm in stack.vms:
        if vm.host is None or vm.host.name != host or vm.firmware != "uefi":
            continue
        try:
            arch = facts.guest(vm.arch).arch
            machine = facts.machine(vm.machine, vm.arch)
            virt = facts.domain_type(vm.host.domain_type, vm.arch)
        except ValueError:
            continue  # reported by the planner, naming the field
        key = (arch, machine, virt)
        if key not in answers:
            try:
                caps = ET.fromstring(conn.getDomainCapabilities(None, arch, machine, virt, 0))
            except libvirt.libvirtError:
                answers[key] = None  # this driver cannot tell
            else:
                values = {v.text for v in caps.iterfind("os/enum[@name='firmware']/value")}
                loaders = [v.text for v in caps.iterfind("os/loader/value")]
                answers[key] = "efi" in values or bool(loaders)
        if answers[key] is False:
            problems.append(FieldError(vm.address, "firmware", (
                f"host {host!r} has no UEFI firmware for {arch} machine {machine!r} ({virt}); install it there "
                "(Debian: ovmf) or use firmware='bios'")))  # fmt: skip
    return problems


def _bridges(conn: Any, stack: Stack, host: str) -> list[FieldError]:
    import libvirt

    wanted: list[tuple[str, str, str]] = []  # (address, field, bridge)
    own = set()
    for net in stack.networks:
        if net.host is None or net.host.name != host or net.existing is True:
            continue
        if net.mode == "bridge" and net.bridge:
            wanted.append((net.address, "bridge", net.bridge))
        else:
            own.add(net.bridge_name)
    for vm in stack.vms:
        if vm.host is None or vm.host.name != host:
            continue
        for i, nic in enumerate(vm.nics):
            if isinstance(nic, NIC) and nic.bridge is not None:
                wanted.append((vm.address, f"nics[{i}].bridge", nic.bridge))
    if not wanted:
        return []
    try:
        present = {i.name() for i in conn.listAllInterfaces(0)}
    except libvirt.libvirtError:
        return []  # no interface driver here: cannot tell
    if conn.getType().lower() == "test":
        return []  # the test driver's interfaces are made up
    present |= own
    fix = "create the bridge there first: virtplan attaches to host bridges, it does not make them"
    return [
        FieldError(address, field, f"host {host!r} has no interface {bridge!r} (`virsh iface-list --all`); {fix}")
        for address, field, bridge in wanted
        if bridge not in present
    ]
