"""The probe guest keeps asking for a DHCP lease when the server is slow (a fixed bug).

dnsmasq pings every new address for up to 3 s before offering it, one client at a time.
With six probe guests taking addresses from the DHCP range at once (as `virtplan apply`
starts them), a guest's REQUEST can wait behind two other clients' pings (6 s and more),
and the probe's ``udhcpc -n -t 15 -T 2`` gives up as soon as one REQUEST is unanswered
three times: four guests of six printed ``GUEST-ERROR reason=dhcp-no-lease`` here.

Only one guest boots here (at most two may, per module): the host's firewall drops the
guest's first three DHCPREQUESTs, which is what a busy server looks like to the guest,
and lets the rest through. A guest that tries again gets its address; the probe's init
(``virtplan_lab/probe/guest/main.sh``) restarts udhcpc until it does.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from test_guest_support import NETWORK, Guest, ProbeStack, wait_for_lease, wait_until

from virtplan_lab.probe import GUEST_ERROR, ProbeImage
from virtplan_lab.probe.parse import iter_events
from virtplan_lab.testbed import PrivateHost

CIDR = "10.86.0.0/24"
GUEST = Guest("g-retry", hostname="retry-host")
#: The DHCP magic cookie followed by option 53 (message type) = 3: a DHCPREQUEST
#: (busybox udhcpc writes the message type first).
DHCPREQUEST = "|63825363350103|"
REQUEST_TRIES = 3  # udhcpc sends a REQUEST this many times before it gives up on an offer


class Firewall:
    """iptables in the private host's network namespace, where its bridges and dnsmasq live."""

    def __init__(self, host: PrivateHost) -> None:
        assert host.pid is not None
        self.netns = f"--net=/proc/{host.pid}/ns/net"
        self.iptables = shutil.which("iptables") or "/usr/sbin/iptables"

    def run(self, *args: str) -> str:
        result = subprocess.run(["nsenter", self.netns, self.iptables, *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def rule(self, bridge: str) -> list[str]:
        return ["-i", bridge, "-p", "udp", "--dport", "67", "-m", "string", "--algo", "bm",
                "--hex-string", DHCPREQUEST, "-j", "DROP"]  # fmt: skip

    def dropped(self, bridge: str) -> int:
        """Packets the rule dropped so far."""
        for line in self.run("-L", "INPUT", "-v", "-n", "-x").splitlines():
            if "DROP" in line and bridge in line and "STRING match" in line:
                return int(line.split()[0])
        raise AssertionError(f"no DHCPREQUEST rule for {bridge}")


@pytest.fixture
def firewall(private_host: PrivateHost) -> Firewall:
    return Firewall(private_host)


def gave_up(path: Path, since: int) -> bool:
    """The guest printed GUEST-ERROR after ``since`` (the log may not exist yet)."""
    data = path.read_bytes()[since:] if path.exists() else b""
    return any(event.tag == GUEST_ERROR for event in iter_events(data))


def test_guest_gets_its_address_when_its_first_requests_go_unanswered(
    private_host: PrivateHost, probe_image: ProbeImage, tmp_path_factory: Any, firewall: Firewall
) -> None:
    directory = tmp_path_factory.mktemp("guestretry")
    stack = ProbeStack("guestretry", directory, probe_image, {"local": private_host}, {"local": CIDR})
    stack.declare(replace(GUEST, state="stopped"))
    stack.apply()  # the network and the guest, not started yet
    conn = private_host.connect()
    try:
        bridge_element = ET.fromstring(conn.networkLookupByName(NETWORK).XMLDesc()).find("bridge")
        assert bridge_element is not None
        bridge = bridge_element.get("name", "")
        console = stack.console(GUEST.name)
        since = console.mark()
        firewall.run("-I", "INPUT", "1", *firewall.rule(bridge))
        try:
            stack.declare(GUEST)
            stack.apply()  # starts the guest
            # Its first offer's REQUESTs are all dropped (or it gave up before its third one).
            tried = wait_until(lambda: firewall.dropped(bridge) >= REQUEST_TRIES or gave_up(console.path, since), 90)
            assert tried, f"the guest sent {firewall.dropped(bridge)} DHCPREQUEST(s) in 90 s"
        finally:
            firewall.run("-D", "INPUT", *firewall.rule(bridge))
        report = console.wait_for_boot(since)  # GuestError at once if the guest gave up
        assert report["hostname"] == "retry-host"
        assert wait_for_lease(conn, report["mac"])["ipaddr"] == report["ip"]
    finally:
        conn.close()
