"""Network changes carried through to running guests (issue 11, item 3), on a real host.

A network that restarts (out-of-band `virsh net-destroy` then apply, a CIDR change that
replaces it, a DHCP change that restarts it) loses its ports, and libvirt leaves the
running guests' taps on no bridge. virtplan plans a live re-plug of each running guest's
NICs after the network's change, and reports a NIC off its bridge as drift that `plan`
fixes. Proven on the host's own bridge (`ip link` inside the private host) and, for a probe
guest, by pinging it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from review_support import Cli

from virtplan_lab.probe import ProbeImage
from virtplan_lab.testbed import PrivateHost

HEADER = 'from virtplan import NIC, VM, Host, Network\nHost("h", uri="qemu:///system", domain_type="qemu")\n'
GUESTS = ("rp-1", "rp-2", "rp-3")


def stack_text(cidr: str = "10.94.0.0/24", dhcp_range: str = "") -> str:
    extra = f", dhcp_range={dhcp_range}" if dhcp_range else ""
    body = HEADER + f'net = Network("rp-net", cidr="{cidr}"{extra})\n'
    return body + "".join(f'VM("{g}", memory="64MiB", nics=[net], shutdown_timeout=0)\n' for g in GUESTS)


def in_host(host: PrivateHost, *cmd: str) -> str:
    return subprocess.run(["nsenter", "-t", str(host.pid), "-n", *cmd], capture_output=True, text=True).stdout


def taps_on(host: PrivateHost, bridge: str) -> list[str]:
    """The guest taps (vnetN) enslaved to `bridge`, from the kernel's own view."""
    out = in_host(host, "ip", "-o", "link", "show", "master", bridge)
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "vnet" in line)


def all_taps(host: PrivateHost) -> list[str]:
    out = in_host(host, "ip", "-o", "link", "show")
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ": vnet" in line)


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("replug")
    cli = Cli(private_host.uri, home / "user", cwd=home)
    stack = home / "replug.py"
    stack.write_text(stack_text())
    cli("apply", str(stack), "--yes")
    conn = private_host.connect()
    yield cli, stack, conn, private_host
    cli("destroy", str(stack), "--yes", "--allow-destroy")
    conn.close()


def domain_ids(conn) -> dict[str, int]:
    return {g: conn.lookupByName(g).ID() for g in GUESTS}


def assert_all_plugged(cli: Cli, stack: Path, host: PrivateHost, conn) -> None:
    taps = all_taps(host)
    assert len(taps) == 3 and taps_on(host, "vp-rp-net") == taps, (
        f"taps {taps}, on the bridge {taps_on(host, 'vp-rp-net')}"
    )
    assert len(conn.networkLookupByName("rp-net").listAllPorts()) == 3
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0, cli("plan", str(stack))
    assert "No changes outside virtplan" in cli("drift", str(stack), "--detailed-exitcode")


def test_an_out_of_band_net_destroy_is_drift_and_apply_replugs_every_running_guest(env):
    cli, stack, conn, host = env
    ids = domain_ids(conn)
    conn.networkLookupByName("rp-net").destroy()  # virsh net-destroy, behind virtplan's back
    assert taps_on(host, "vp-rp-net") == [] and len(all_taps(host)) == 3
    drift = json.loads(cli.stdout("drift", str(stack), "--format", "json", "--detailed-exitcode", rc=2))
    drifted = {d["address"]: {f["field"]: f["actual"] for f in d["fields"]} for d in drift["drift"]}
    for g in GUESTS:
        assert len(drifted[f"h/vm/{g}"]["unplugged"]) == 1, drifted
    plan = cli("plan", str(stack))
    assert plan.count("unplugged: NICs ") == 3, plan
    out = cli("apply", str(stack), "--yes")
    assert all(f"done     update h/vm/{g}" in out for g in GUESTS), out
    assert_all_plugged(cli, stack, host, conn)
    assert domain_ids(conn) == ids, "re-plugging must not restart the guests"


def test_a_cidr_change_replaces_the_network_and_replugs_the_running_guests_live(env):
    cli, stack, conn, host = env
    ids = domain_ids(conn)
    stack.write_text(stack_text(cidr="10.95.0.0/24"))
    plan = cli("plan", str(stack))
    assert "-/+ network rp-net" in plan, plan
    for g in GUESTS:
        assert f"~ vm {g}  update: network rp-net restarts under it: its NICs are re-plugged live" in plan, plan
    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert "10.95.0.1" in conn.networkLookupByName("rp-net").XMLDesc(0)
    assert_all_plugged(cli, stack, host, conn)
    assert domain_ids(conn) == ids


def test_a_dhcp_change_restarts_the_network_and_the_guests_stay_on_it(env):
    cli, stack, conn, host = env
    stack.write_text(stack_text(cidr="10.95.0.0/24", dhcp_range='("10.95.0.100", "10.95.0.120")'))
    plan = cli("plan", str(stack))
    assert "restart: dhcp_range changed; the network restarts" in plan and plan.count("re-plugged live") == 3, plan
    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert_all_plugged(cli, stack, host, conn)


def test_the_virsh_commands_replug_the_same_way(env):
    cli, stack, conn, host = env
    conn.networkLookupByName("rp-net").destroy()
    plan = cli("plan", str(stack), "--commands")
    assert plan.count("virsh update-device") == 6 and "--live" in plan, plan
    cli("apply", str(stack), "--yes")
    assert_all_plugged(cli, stack, host, conn)


def test_a_probe_guest_answers_again_after_its_network_was_destroyed_and_applied(
    make_private_host, probe_image: ProbeImage, tmp_path_factory
):
    """From inside: the guest got its address, the network goes away under it, apply
    brings the network back and re-plugs the guest, which answers a ping again."""
    from test_guest_support import BOOT_TIMEOUT, NETWORK, Guest, ProbeStack, wait_until

    host = make_private_host("replug-probe")
    stack = ProbeStack("replugprobe", tmp_path_factory.mktemp("replugprobe"), probe_image, {"local": host},
                       {"local": "10.96.0.0/24"})  # fmt: skip
    guest = Guest("rp-probe", ip="10.96.0.10")
    stack.declare(guest)
    console = stack.console(guest.name)
    since = console.mark()
    stack.apply()
    console.wait_for_boot(since)
    ping = [str(probe_image.busybox), "ping", "-c", "1", "-w", "3", "10.96.0.10"]

    def answers() -> bool:
        return subprocess.run(["nsenter", "-t", str(host.pid), "-n", *ping], capture_output=True).returncode == 0

    assert wait_until(answers, BOOT_TIMEOUT), "the guest never answered"
    conn = host.connect()
    try:
        conn.networkLookupByName(NETWORK).destroy()
        conn.networkLookupByName(NETWORK).create()  # as an operator would: destroy, start again
        assert not answers(), "the tap should be on no bridge now"
        plan = stack.plan()
        assert [c.address for c in plan.changes] == ["local/vm/rp-probe"], plan.changes
        stack.apply()
        assert wait_until(answers, 30), "the guest does not answer after the re-plug"
        assert stack.plan().empty
    finally:
        conn.close()
