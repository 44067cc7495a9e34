"""Addresses and cloud-init, proven from inside real probe guests (issue 6, items 1 and 2).

One private host; a stack with a NAT network and two probe guests booting together:
``g-fixed`` with a DHCP reservation and its own hostname and instance-id, ``g-range``
with an address from the DHCP range and the default ones. What each guest prints on its
console is compared with what virtplan says: ``virtplan show`` (CLI) and the Pulumi
native provider's ``read``. Then a user-data change in the stack is planned as a restart
of that VM alone, and after apply the restarted guest reports the new value.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import libvirt
import pytest
from test_guest_support import (
    NETWORK,
    Console,
    Guest,
    ProbeStack,
    domain_mac,
    json_rows,
    wait_for_lease,
    wire,
)

from virtplan.plan.planner import Action, Plan
from virtplan.plan.policy import Policy
from virtplan.pulumi.describe import describe
from virtplan.pulumi.provider import VirtplanProvider
from virtplan.views.text import plan_text
from virtplan_lab.probe import GUEST, GUEST_POWEROFF, ProbeImage
from virtplan_lab.testbed import PrivateHost

REPO = Path(__file__).resolve().parents[2]
CIDR = "10.81.0.0/24"
RESERVED_IP = "10.81.0.10"
RANGE_START, RANGE_END = "10.81.0.128", "10.81.0.254"
FIXED = Guest(
    "g-fixed", ip=RESERVED_IP, hostname="fixed-host", instance_id="iid-fixed-7f3a", value="first value"
)  # a space in the value exercises the guest's percent-encoding
RANGED = Guest("g-range", hostname="range-host", value="ranged-1")  # default instance-id


@dataclass
class Deployed:
    stack: ProbeStack
    conn: Any
    consoles: dict[str, Console]
    reports: dict[str, dict[str, str]]  # the latest GUEST report per VM


@pytest.fixture(scope="module")
def deployed(private_host: PrivateHost, probe_image: ProbeImage, tmp_path_factory: Any) -> Iterator[Deployed]:
    """The stack applied: both guests started together and each has reported from inside."""
    stack = ProbeStack(
        "guestaddr", tmp_path_factory.mktemp("guestaddr"), probe_image, {"local": private_host}, {"local": CIDR}
    )
    stack.declare(FIXED, RANGED)
    consoles = {g.name: stack.console(g.name) for g in stack.guests}
    since = {name: console.mark() for name, console in consoles.items()}
    stack.apply()
    reports = {name: console.wait_for_boot(since[name]) for name, console in consoles.items()}
    conn = private_host.connect()
    try:
        yield Deployed(stack, conn, consoles, reports)
    finally:
        conn.close()


def virtplan_show(deployed: Deployed, *options: str) -> str:
    """`virtplan show` in a separate process, as a user runs it; its standard output."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTPLAN_URI"}
    env.update(NO_COLOR="1", COLUMNS="200")
    uri = deployed.stack.hosts["local"].uri
    command = [sys.executable, "-m", "virtplan.cli", "show", str(deployed.stack.file), "--host", f"local={uri}"]
    proc = subprocess.run([*command, *options], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def pulumi_read(deployed: Deployed, name: str) -> dict[str, Any]:
    """The native provider's `read` of one VM, given the inputs the Pulumi program describes."""
    stack = deployed.stack.load()
    [vm] = [v for v in stack.vms if v.name == name]
    provider = VirtplanProvider("vm")
    result = provider.read(vm.address, wire(describe(vm, stack)))
    assert result.id == vm.address, f"provider read found no {vm.address}"
    assert result.outs is not None
    return result.outs


# -- item 1: addresses -----------------------------------------------------------------


def test_reserved_vm_reports_exactly_its_reservation(deployed: Deployed) -> None:
    report = deployed.reports["g-fixed"]
    assert report["ip"] == RESERVED_IP
    assert report["mac"] == domain_mac(deployed.conn, "g-fixed")


def test_range_vm_reports_an_address_from_the_dhcp_range(deployed: Deployed) -> None:
    report = deployed.reports["g-range"]
    # The range libvirt gave dnsmasq: virtplan's default, the upper half of the subnet.
    dhcp_range = ET.fromstring(deployed.conn.networkLookupByName(NETWORK).XMLDesc()).find("ip/dhcp/range")
    assert dhcp_range is not None
    assert (dhcp_range.get("start"), dhcp_range.get("end")) == (RANGE_START, RANGE_END)
    ip = ipaddress.IPv4Address(report["ip"])
    assert ipaddress.IPv4Address(RANGE_START) <= ip <= ipaddress.IPv4Address(RANGE_END), report["ip"]
    assert report["ip"] != RESERVED_IP
    assert report["mac"] == domain_mac(deployed.conn, "g-range")


def test_show_and_pulumi_read_report_the_address_the_guest_reports(deployed: Deployed) -> None:
    said = {name: report["ip"] for name, report in deployed.reports.items()}
    for name in said:
        lease = wait_for_lease(deployed.conn, deployed.reports[name]["mac"])
        assert lease["ipaddr"] == said[name]

    rows = {row["name"]: row for row in json_rows(virtplan_show(deployed, "--format", "json")) if row["kind"] == "vm"}
    assert set(rows) == set(said)
    for name, ip in said.items():
        assert rows[name]["state"] == "running"
        assert [nic["ip"] for nic in rows[name]["nics"]] == [ip], rows[name]
        assert (rows[name]["guest"] or {}).get("ip") == ip, rows[name]
    text = virtplan_show(deployed)
    for name, ip in said.items():
        assert re.search(rf"vm\s+{name}\s+running .* {re.escape(ip)} \(guest confirms\)", text), text

    for name, ip in said.items():
        outs = pulumi_read(deployed, name)
        assert outs["ipAddresses"] == [ip], outs["ipAddresses"]
        assert outs["macAddresses"] == [deployed.reports[name]["mac"]]


# -- item 2: cloud-init ----------------------------------------------------------------


def test_hostname_and_instance_id_from_cloud_init_reach_the_guest(deployed: Deployed) -> None:
    fixed, ranged = deployed.reports["g-fixed"], deployed.reports["g-range"]
    assert (fixed["hostname"], fixed["instance-id"], fixed["value"]) == ("fixed-host", "iid-fixed-7f3a", "first value")
    assert (ranged["hostname"], ranged["instance-id"], ranged["value"]) == ("range-host", "iid-g-range", "ranged-1")
    # The guest sends the seed's hostname with its DHCP request (option 12) and dnsmasq keeps
    # it, unless a reservation names the host: virtplan names reservations after the VM.
    assert wait_for_lease(deployed.conn, ranged["mac"])["hostname"] == "range-host"
    assert wait_for_lease(deployed.conn, fixed["mac"])["hostname"] == "g-fixed"


def test_user_data_change_restarts_that_vm_and_the_guest_reports_the_new_value(deployed: Deployed) -> None:
    stack, conn = deployed.stack, deployed.conn
    changed = replace(FIXED, value="second value")
    stack.declare(changed, RANGED)
    ids = {name: conn.lookupByName(name).ID() for name in ("g-fixed", "g-range")}

    def announced_restart(plan: Plan) -> None:
        assert [(c.address, c.action) for c in plan.changes] == [("local/vm/g-fixed", Action.RESTART)]
        assert [(fc.field, fc.policy) for fc in plan.changes[0].changes] == [("cloud_init", Policy.RESTART)]
        assert "1 to restart" in plan_text(plan)

    console = deployed.consoles["g-fixed"]
    since = console.mark()
    stack.apply(check=announced_restart)
    assert conn.lookupByName("g-fixed").ID() != ids["g-fixed"]  # a new QEMU process: restarted
    assert conn.lookupByName("g-range").ID() == ids["g-range"]  # the other VM was not touched

    deployed.reports["g-fixed"] = report = console.wait_for_boot(since)
    assert report["value"] == "second value"
    assert (report["hostname"], report["instance-id"], report["ip"]) == ("fixed-host", "iid-fixed-7f3a", RESERVED_IP)
    # The restart was graceful: the guest saw the ACPI power button before it booted again.
    tags = [e.tag for e in console.events_since(since) if e.tag in (GUEST, GUEST_POWEROFF)]
    assert tags == [GUEST_POWEROFF, GUEST]
    other = deployed.consoles["g-range"]
    assert [e.tag for e in other.events_since(other.boot_offset) if e.tag in (GUEST, GUEST_POWEROFF)] == [GUEST]
    assert conn.lookupByName("g-fixed").state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert stack.plan().empty
