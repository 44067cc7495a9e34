"""A clone of a running environment, proven from inside its guest (issue 6, item 5).

One private host; a source stack with one probe guest (a reservation, its own hostname
and instance-id) is applied and reports from inside. ``virtplan clone`` (the CLI, as a
user runs it) then clones the running environment with its subnet mapped elsewhere. The
cloned guest boots and reports its new address (the reservation, moved into the clone's
subnet), its new hostname and a new instance-id, with the source's user-data; the source
guest keeps running, never restarted, with its old address.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_guest_support import (
    NETWORK,
    Console,
    Guest,
    ProbeStack,
    domain_mac,
    leases,
    wait_for_lease,
)

from virtplan.model import load_stack
from virtplan_lab.probe import GUEST, GUEST_POWEROFF, ProbeImage
from virtplan_lab.testbed import PrivateHost

REPO = Path(__file__).resolve().parents[2]
SOURCE_CIDR, CLONE_CIDR = "10.84.0.0/24", "10.85.0.0/24"
SOURCE = Guest("g-src", ip="10.84.0.10", hostname="src-host", instance_id="iid-src-1", value="cloned value")
CLONE = "c5"


@dataclass
class Cloned:
    stack: ProbeStack
    conn: Any
    source: Console
    source_report: dict[str, str]
    source_id: int
    cloned_at: int  # the source console's size when the clone began
    clone_vm: Any  # the clone program's VM (virtplan.model.VM)
    clone_report: dict[str, str]
    output: str


def virtplan_clone(stack: ProbeStack) -> str:
    """`virtplan clone` in a separate process; the clone's program lands beside the source's."""
    env = {k: v for k, v in os.environ.items() if k != "VIRTPLAN_URI"}
    env.update(NO_COLOR="1", COLUMNS="200")
    host = f"local={stack.hosts['local'].uri}"
    args = ["clone", str(stack.file), "--name", CLONE, "--subnet-map", f"{SOURCE_CIDR}={CLONE_CIDR}", "--host", host]
    proc = subprocess.run(
        [sys.executable, "-m", "virtplan.cli", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    return out


@pytest.fixture(scope="module")
def cloned(private_host: PrivateHost, probe_image: ProbeImage, tmp_path_factory: Any) -> Iterator[Cloned]:
    """The source applied and reporting; then cloned, and the clone's guest reporting."""
    directory = tmp_path_factory.mktemp("guestclone")
    stack = ProbeStack("guestsrc", directory, probe_image, {"local": private_host}, {"local": SOURCE_CIDR})
    stack.declare(SOURCE)
    source = stack.console(SOURCE.name)
    since = source.mark()
    stack.apply()
    source_report = source.wait_for_boot(since)
    conn = private_host.connect()
    try:
        source_id = conn.lookupByName(SOURCE.name).ID()
        cloned_at = source.mark()
        output = virtplan_clone(stack)
        [clone_vm] = load_stack(directory / f"{CLONE}.py").vms
        assert clone_vm.seed_pool is not None
        log = Path(clone_vm.seed_pool.path) / clone_vm.console_log_name
        assert private_host.pid is not None
        clone_console = Console(Path(f"/proc/{private_host.pid}/root") / log.relative_to("/"))
        clone_report = clone_console.wait_for_boot(0)  # a new VM: its log starts with this boot
        yield Cloned(stack, conn, source, source_report, source_id, cloned_at, clone_vm, clone_report, output)
    finally:
        conn.close()


def test_the_cloned_guest_reports_its_new_address_hostname_and_instance_id(cloned: Cloned) -> None:
    report, source = cloned.clone_report, cloned.source_report
    assert source["ip"] == SOURCE.ip
    assert report["ip"] == "10.85.0.10"  # the reservation, at its place in the clone's subnet
    assert ipaddress.IPv4Address(report["ip"]) in ipaddress.IPv4Network(CLONE_CIDR)
    ci = cloned.clone_vm.cloud_init
    assert (report["hostname"], report["instance-id"]) == (ci.hostname, ci.instance_id)
    assert report["hostname"] not in ("", source["hostname"]) and report["instance-id"] not in (
        "",
        source["instance-id"],
    )
    assert report["value"] == "cloned value"  # the rest of the seed is the source's
    assert report["mac"] == domain_mac(cloned.conn, cloned.clone_vm.name) != source["mac"]
    clone_net = cloned.clone_vm.nics[0].network.name
    assert wait_for_lease(cloned.conn, report["mac"], clone_net)["ipaddr"] == report["ip"]
    assert set(leases(cloned.conn, clone_net)) == {report["mac"]}  # the source's guest is not on it


def test_the_source_guest_keeps_running_with_its_old_address(cloned: Cloned) -> None:
    domain = cloned.conn.lookupByName(SOURCE.name)
    assert domain.isActive() and domain.ID() == cloned.source_id  # never restarted
    # Nothing happened inside: no power-off, no new boot since the clone began.
    assert [e.tag for e in cloned.source.events_since(cloned.cloned_at) if e.tag in (GUEST, GUEST_POWEROFF)] == []
    assert wait_for_lease(cloned.conn, cloned.source_report["mac"], NETWORK)["ipaddr"] == SOURCE.ip
    assert cloned.stack.plan().empty  # the source stack still matches its hosts


def test_each_address_answers_with_its_own_guest(cloned: Cloned, probe_image: ProbeImage) -> None:
    host = cloned.stack.hosts["local"]
    assert host.pid is not None
    for report in (cloned.source_report, cloned.clone_report):
        command = [str(probe_image.busybox), "ping", "-c", "2", "-w", "20", report["ip"]]
        netns = ["nsenter", f"--net=/proc/{host.pid}/ns/net"]
        ping = subprocess.run([*netns, *command], capture_output=True, text=True, timeout=60)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        neigh = subprocess.run([*netns, "ip", "neigh", "show", report["ip"]], capture_output=True, text=True)
        assert f"lladdr {report['mac']}" in neigh.stdout, neigh.stdout
