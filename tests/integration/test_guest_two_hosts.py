"""Two isolated private hosts, one probe guest each, the same subnet (issue 6, item 6).

One stack declares a host ``a`` and a host ``b``, each with its own NAT network of the
same name, bridge and subnet, and a guest reserving the same address. Both guests boot
together and each reports that address from inside. Each host's dnsmasq leased it to its
own guest only, and from inside each host's network namespace the address answers with
that host's guest's MAC: the hosts never see each other.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_guest_support import NETWORK, Guest, ProbeStack, domain_mac, leases, wait_for_lease

from virtplan_lab.probe import ProbeImage
from virtplan_lab.testbed import PrivateHost

CIDR = "10.83.0.0/24"
SHARED_IP = "10.83.0.10"
GUESTS = (Guest("twin-a", host="a", ip=SHARED_IP), Guest("twin-b", host="b", ip=SHARED_IP))


@dataclass
class Deployed:
    stack: ProbeStack
    hosts: dict[str, PrivateHost]  # stack host name -> private host
    conns: dict[str, Any]
    reports: dict[str, dict[str, str]]  # by stack host name


@pytest.fixture(scope="module")
def deployed(
    two_hosts: tuple[PrivateHost, PrivateHost], probe_image: ProbeImage, tmp_path_factory: Any
) -> Iterator[Deployed]:
    hosts = dict(zip("ab", two_hosts, strict=True))
    stack = ProbeStack(
        "guesttwins", tmp_path_factory.mktemp("guesttwins"), probe_image, hosts, dict.fromkeys(hosts, CIDR)
    )
    stack.declare(*GUESTS)
    consoles = {g.host: stack.console(g.name) for g in GUESTS}
    since = {name: console.mark() for name, console in consoles.items()}
    stack.apply()
    reports = {name: console.wait_for_boot(since[name]) for name, console in consoles.items()}
    conns = {name: host.connect() for name, host in hosts.items()}
    try:
        yield Deployed(stack, hosts, conns, reports)
    finally:
        for conn in conns.values():
            conn.close()


def in_host_netns(host: PrivateHost, *command: str) -> str:
    """Run ``command`` in the private host's network namespace (where its bridge lives)."""
    assert host.pid is not None
    result = subprocess.run(
        ["nsenter", f"--net=/proc/{host.pid}/ns/net", *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return result.stdout


def test_each_host_has_its_own_network_with_the_same_subnet_and_bridge(deployed: Deployed) -> None:
    shapes = set()
    for conn in deployed.conns.values():
        net = ET.fromstring(conn.networkLookupByName(NETWORK).XMLDesc())
        bridge, ip = net.find("bridge"), net.find("ip")
        assert bridge is not None and ip is not None
        shapes.add((bridge.get("name"), ip.get("address"), ip.get("netmask") or ip.get("prefix")))
    assert len(shapes) == 1, shapes  # identical networks: only the namespaces keep them apart
    assert [d.name() for d in deployed.conns["a"].listAllDomains()] == ["twin-a"]
    assert [d.name() for d in deployed.conns["b"].listAllDomains()] == ["twin-b"]


def test_both_guests_obtain_their_address(deployed: Deployed) -> None:
    for name, guest in zip("ab", GUESTS, strict=True):
        report = deployed.reports[name]
        assert report["ip"] == SHARED_IP, report
        assert report["hostname"] == guest.name
        assert report["mac"] == domain_mac(deployed.conns[name], guest.name)
    assert deployed.reports["a"]["mac"] != deployed.reports["b"]["mac"]


def test_each_host_leased_the_address_to_its_own_guest_only(deployed: Deployed) -> None:
    for name in "ab":
        mac = deployed.reports[name]["mac"]
        conn = deployed.conns[name]
        wait_for_lease(conn, mac)
        assert {m: lease["ipaddr"] for m, lease in leases(conn).items()} == {mac: SHARED_IP}


def test_the_address_answers_with_each_hosts_own_guest(deployed: Deployed, probe_image: ProbeImage) -> None:
    for name in "ab":
        host = deployed.hosts[name]
        in_host_netns(host, str(probe_image.busybox), "ping", "-c", "2", "-w", "20", SHARED_IP)
        neighbour = in_host_netns(host, "ip", "neigh", "show", SHARED_IP)
        assert f"lladdr {deployed.reports[name]['mac']}" in neighbour, neighbour
