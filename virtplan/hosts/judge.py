"""Declared values only a host can judge, checked when planning (never found out mid-apply):
UEFI firmware for a VM's architecture and machine. The architecture, machine type and domain
type are checked against the host's capabilities when the domain is rendered
(`virtplan.documents.capabilities`); host bridges against the interfaces observe read
(`Planner.check_bridges`).

Read-only. A host whose driver cannot answer a question (libvirt's test driver has no
domain capabilities) is not judged on it.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

from virtplan.documents.capabilities import HostFacts
from virtplan.errors import FieldError
from virtplan.model import Stack


def host_problems(conn: Any, stack: Stack, host: str, facts: HostFacts) -> list[FieldError]:
    """What the stack declares for `host` that the host cannot do."""
    return _firmware(conn, stack, host, facts)


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
