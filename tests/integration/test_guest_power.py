"""Power state and live memory, proven from inside a real probe guest (issue 6, items 3 and 4).

One private host, one probe guest (128 MiB now, up to 256 MiB live). Declaring
``state="stopped"`` makes apply press the guest's ACPI power button: the guest prints
``GUEST-POWEROFF`` and powers itself off (libvirt records a shutdown, not a destroy);
``state="running"`` boots it again and it reports its address again. A larger ``memory``
is planned as a live change and reaches the running guest through its balloon: the same
QEMU process, a larger MemTotal reported from inside.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import libvirt
import pytest
from test_guest_support import (
    LEASE_TIMEOUT,
    Console,
    Guest,
    MiB_IN_KIB,
    ProbeStack,
    domain_mac,
    leases,
    wait_for_lease,
    wait_until,
)

from virtplan.plan.planner import Action, Plan
from virtplan.plan.policy import Policy
from virtplan.views.text import plan_text
from virtplan_lab.probe import GUEST, GUEST_POWEROFF, ProbeImage
from virtplan_lab.testbed import PrivateHost

CIDR = "10.82.0.0/24"
RESERVED_IP = "10.82.0.10"
BASE = Guest("g-power", ip=RESERVED_IP, hostname="power-host", memory="128MiB", max_memory="256MiB")
ADDRESS = "local/vm/g-power"


@dataclass
class Deployed:
    stack: ProbeStack
    conn: Any
    console: Console
    report: dict[str, str]  # the latest boot's GUEST report

    @property
    def domain(self) -> Any:
        return self.conn.lookupByName(BASE.name)


@pytest.fixture(scope="module")
def deployed(private_host: PrivateHost, probe_image: ProbeImage, tmp_path_factory: Any) -> Iterator[Deployed]:
    """The guest applied and booted: it has reported from inside."""
    directory = tmp_path_factory.mktemp("guestpower")
    stack = ProbeStack("guestpower", directory, probe_image, {"local": private_host}, {"local": CIDR})
    stack.declare(BASE)
    console = stack.console(BASE.name)
    since = console.mark()
    stack.apply()
    report = console.wait_for_boot(since)
    conn = private_host.connect()
    try:
        yield Deployed(stack, conn, console, report)
    finally:
        conn.close()


def only_change(field: str, policy: Policy, action: Action = Action.UPDATE) -> Any:
    """A plan check: exactly one change, to the guest's ``field``, with ``policy``."""

    def check(plan: Plan) -> None:
        assert [(c.address, c.action) for c in plan.changes] == [(ADDRESS, action)], plan_text(plan)
        assert [(fc.field, fc.policy) for fc in plan.changes[0].changes] == [(field, policy)], plan_text(plan)

    return check


# -- item 3: desired power state ---------------------------------------------------------


def test_stopped_shuts_the_guest_down_through_acpi_and_running_boots_it_again(deployed: Deployed) -> None:
    stack, console = deployed.stack, deployed.console
    assert deployed.report["ip"] == RESERVED_IP
    mac = domain_mac(deployed.conn, BASE.name)
    wait_for_lease(deployed.conn, mac)

    stack.declare(replace(BASE, state="stopped"))
    since = console.mark()
    stack.apply(check=only_change("state", Policy.LIVE))
    # libvirt records a shutdown by the guest: apply did not have to destroy it...
    assert deployed.domain.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    # ...because the guest itself saw the power button, released its lease and powered off.
    poweroff = console.wait([GUEST_POWEROFF], since)
    assert poweroff.fields["lease"] == "released"
    assert wait_until(lambda: mac not in leases(deployed.conn), LEASE_TIMEOUT), leases(deployed.conn)
    assert stack.plan().empty

    stack.declare(BASE)
    since = console.mark()
    stack.apply(check=only_change("state", Policy.LIVE))
    deployed.report = report = console.wait_for_boot(since)
    assert (report["ip"], report["mac"], report["hostname"]) == (RESERVED_IP, mac, "power-host")
    assert deployed.domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert wait_until(lambda: leases(deployed.conn).get(mac, {}).get("ipaddr") == RESERVED_IP, LEASE_TIMEOUT)
    assert stack.plan().empty


# -- item 4: live memory -------------------------------------------------------------------


def test_live_memory_increase_reaches_the_running_guest_without_a_restart(deployed: Deployed) -> None:
    stack, console = deployed.stack, deployed.console
    # The guest boots with max_memory; its balloon then gives back all but `memory`.
    before = console.wait_for_mem(lambda kib: kib <= 128 * MiB_IN_KIB)
    domain_id = deployed.domain.ID()

    stack.declare(replace(BASE, memory="192MiB"))
    since = console.mark()

    def live(plan: Plan) -> None:
        only_change("memory", Policy.LIVE)(plan)
        assert "1 to change live, 0 to restart" in plan_text(plan)

    stack.apply(check=live)
    grown = 64 * MiB_IN_KIB
    after = console.wait_for_mem(lambda kib: kib >= before + grown * 0.9)
    assert before + grown * 0.9 <= after <= 192 * MiB_IN_KIB
    # The same QEMU process, and no reboot seen from inside: no poweroff, no new GUEST line.
    assert deployed.domain.ID() == domain_id
    assert deployed.domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert [e.tag for e in console.events_since(since) if e.tag in (GUEST, GUEST_POWEROFF)] == []
    assert stack.plan().empty
