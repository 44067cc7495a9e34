"""The probe guest really boots on a private host and reports, from inside, what it got.

One guest (TCG, 128 MiB, virtio NIC with a DHCP reservation, NoCloud seed on a
virtio-scsi CD-ROM, kernel and initrd uploaded as pool volumes) serves the whole
module; tests that need it running start it again if an earlier test shut it down.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from virtplan.documents.seed import build_seed_iso
from virtplan_lab.probe import (
    GUEST,
    GUEST_MEM,
    GUEST_POWEROFF,
    GuestError,
    ProbeImage,
    build_probe,
    log_size,
    parse_guest_line,
    parse_line,
    wait_for_event,
    wait_for_guest_line,
)
from virtplan_lab.probe.parse import iter_events
from virtplan_lab.testbed import PrivateHost

REPO = Path(__file__).resolve().parents[2]
MiB_IN_KIB = 1024
BOOT_TIMEOUT = 120  # TCG on a busy 2-core machine: seconds, not minutes
PREFIX = "192.168.160"
RESERVED_IP = f"{PREFIX}.10"
RESERVED_MAC = "52:54:00:7e:a1:10"  # unique to this module: no stale leases from other tests
HOSTNAME = "probe-one"
INSTANCE_ID = "iid-probe-one-1"
VALUE = "hello world 42%"  # a space and a '%': exercises the percent-encoding
META_DATA = f'instance-id: "{INSTANCE_ID}"\nlocal-hostname: "{HOSTNAME}"\n'
USER_DATA = f'#cloud-config\nhostname: "{HOSTNAME}"\nprobe_value: "{VALUE}"\n'
CURRENT_MEMORY_MIB = 128
MAX_MEMORY_MIB = 192


@dataclass
class ProbeVM:
    """The module's probe guest; ``boot_offset`` is where its latest boot starts in the log."""

    conn: Any
    domain: Any
    network: Any
    console_log: Path
    boot_offset: int
    report: dict[str, str]


# -- libvirt objects -----------------------------------------------------------------


def network_xml() -> str:
    """A NAT network with a DHCP range and a reservation for the probe's MAC."""
    return f"""
<network>
  <name>probe-net</name>
  <forward mode='nat'/>
  <bridge name='vpprobe0' stp='on' delay='0'/>
  <ip address='{PREFIX}.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='{PREFIX}.100' end='{PREFIX}.200'/>
      <host mac='{RESERVED_MAC}' name='{HOSTNAME}' ip='{RESERVED_IP}'/>
    </dhcp>
  </ip>
</network>"""


def domain_xml(kernel: str, initrd: str, cmdline: str, console_log: Path) -> str:
    """A TCG guest booting ``kernel``/``initrd`` directly, seed on a virtio-scsi CD-ROM."""
    return f"""
<domain type='qemu'>
  <name>probe-one</name>
  <memory unit='MiB'>{MAX_MEMORY_MIB}</memory>
  <currentMemory unit='MiB'>{CURRENT_MEMORY_MIB}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <controller type='scsi' index='0' model='virtio-scsi'/>
    <disk type='volume' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source pool='probe-pool' volume='seed.iso'/>
      <target dev='sda' bus='scsi'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <source network='probe-net'/>
      <mac address='{RESERVED_MAC}'/>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file='{console_log}' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'><target type='serial' port='0'/></console>
    <memballoon model='virtio'/>
  </devices>
</domain>"""


def start_dir_pool(conn: Any, name: str, path: Path) -> Any:
    pool = conn.storagePoolDefineXML(f"<pool type='dir'><name>{name}</name><target><path>{path}</path></target></pool>")
    pool.build(0)
    pool.create()
    return pool


def upload_volume(conn: Any, pool: Any, name: str, data: bytes) -> Any:
    """A raw volume holding ``data``, sent through the libvirt stream API (works remotely)."""
    volume = pool.createXML(
        f"<volume><name>{name}</name><capacity unit='bytes'>{len(data)}</capacity>"
        "<target><format type='raw'/></target></volume>",
        0,
    )
    stream = conn.newStream(0)
    volume.upload(stream, 0, len(data), 0)
    stream.sendAll(lambda _stream, nbytes, source: source.read(nbytes), io.BytesIO(data))
    stream.finish()
    return volume


def boot(vm: ProbeVM) -> None:
    """Start the (shut off) domain and wait for this boot's GUEST line."""
    vm.boot_offset = log_size(vm.console_log)
    vm.domain.create()
    vm.report = wait_for_guest_line(vm.console_log, BOOT_TIMEOUT, since_offset=vm.boot_offset)


def latest_mem_kib(vm: ProbeVM) -> int:
    """MemTotal as last reported (GUEST or GUEST-MEM) since the current boot."""
    data = vm.console_log.read_bytes()[vm.boot_offset :]
    reports = [e for e in iter_events(data) if e.tag in (GUEST, GUEST_MEM)]
    return int(reports[-1].fields["mem_kib"])


def wait_for_mem(vm: ProbeVM, condition: Any, timeout: float) -> int:
    """Wait until the guest's reported MemTotal satisfies ``condition``; return it."""
    deadline = time.monotonic() + timeout
    offset = vm.boot_offset
    mem = latest_mem_kib(vm)
    while not condition(mem):
        event = wait_for_event(vm.console_log, [GUEST_MEM], max(deadline - time.monotonic(), 0.1), offset)
        offset = event.end_offset
        mem = int(event.fields["mem_kib"])
    return mem


def leases(vm: ProbeVM) -> list[dict[str, Any]]:
    return [lease for lease in vm.network.DHCPLeases() if lease["mac"] == RESERVED_MAC]


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_vm(private_host: PrivateHost, probe_image: ProbeImage) -> Iterator[ProbeVM]:
    """The probe guest, defined and booted once for the module."""
    conn = private_host.connect()
    try:
        network = conn.networkDefineXML(network_xml())
        network.create()
        pool = start_dir_pool(conn, "probe-pool", private_host.workdir / "probe-pool")
        kernel = upload_volume(conn, pool, "probe-vmlinuz", probe_image.kernel.read_bytes())
        initrd = upload_volume(conn, pool, "probe-initrd.img", probe_image.initrd.read_bytes())
        upload_volume(conn, pool, "seed.iso", build_seed_iso({"meta-data": META_DATA, "user-data": USER_DATA}))
        console_log = private_host.workdir / "probe-one.console.log"
        domain = conn.defineXML(domain_xml(kernel.path(), initrd.path(), probe_image.cmdline, console_log))
        vm = ProbeVM(conn, domain, network, console_log, 0, {})
        boot(vm)
        yield vm
    finally:
        conn.close()


@pytest.fixture
def running_probe(probe_vm: ProbeVM) -> ProbeVM:
    """The module's probe guest, booted again if a previous test shut it down."""
    if not probe_vm.domain.isActive():
        boot(probe_vm)
    return probe_vm


# -- the guest, from inside ----------------------------------------------------------


def test_guest_reports_reserved_address_and_seed(running_probe: ProbeVM) -> None:
    report = running_probe.report
    assert report["ip"] == RESERVED_IP
    assert report["mac"] == RESERVED_MAC
    assert report["hostname"] == HOSTNAME
    assert report["instance-id"] == INSTANCE_ID
    assert report["value"] == VALUE
    assert report["userdata_sha256"] == hashlib.sha256(USER_DATA.encode()).hexdigest()
    assert 64 * MiB_IN_KIB < int(report["mem_kib"]) <= MAX_MEMORY_MIB * MiB_IN_KIB


def test_dnsmasq_recorded_the_hostname_the_guest_sent(running_probe: ProbeVM) -> None:
    [lease] = leases(running_probe)
    assert lease["ipaddr"] == RESERVED_IP
    assert lease["hostname"] == HOSTNAME  # DHCP option 12, sent by udhcpc from the seed


def test_guest_answers_ping(running_probe: ProbeVM, private_host: PrivateHost, probe_image: ProbeImage) -> None:
    assert private_host.pid is not None
    netns = f"/proc/{private_host.pid}/ns/net"  # the bridge exists only in the host's namespace
    ping = [str(probe_image.busybox), "ping", "-c", "3", "-w", "20", RESERVED_IP]
    result = subprocess.run(["nsenter", f"--net={netns}", *ping], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_live_memory_increase_is_visible_inside(running_probe: ProbeVM) -> None:
    vm = running_probe
    # The guest boots with the maximum; the balloon then shrinks it to currentMemory.
    before = wait_for_mem(vm, lambda kib: kib <= CURRENT_MEMORY_MIB * MiB_IN_KIB, 60)
    vm.domain.setMemoryFlags(MAX_MEMORY_MIB * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    grown = (MAX_MEMORY_MIB - CURRENT_MEMORY_MIB) * MiB_IN_KIB
    after = wait_for_mem(vm, lambda kib: kib >= before + grown * 0.9, 60)
    assert vm.domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
    assert after > before


def test_acpi_shutdown_releases_the_lease_and_powers_off(running_probe: ProbeVM) -> None:
    vm = running_probe
    offset = log_size(vm.console_log)
    vm.domain.shutdown()  # ACPI power button; never destroy()
    event = wait_for_event(vm.console_log, [GUEST_POWEROFF], 60, since_offset=offset)
    assert event.fields["lease"] == "released"
    assert wait_until(lambda: not vm.domain.isActive(), 60), "domain still running after GUEST-POWEROFF"
    assert vm.domain.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN]
    assert wait_until(lambda: leases(vm) == [], 10), f"lease not released: {leases(vm)}"


def test_guest_reports_again_after_a_restart(running_probe: ProbeVM) -> None:
    vm = running_probe
    vm.domain.shutdown()
    assert wait_until(lambda: not vm.domain.isActive(), 60), "domain did not power off"
    boot(vm)
    assert vm.report["ip"] == RESERVED_IP  # the released reservation is handed out again
    assert vm.report["instance-id"] == INSTANCE_ID
    assert [lease["ipaddr"] for lease in leases(vm)] == [RESERVED_IP]


# -- the builder and the console protocol (no guest needed) ---------------------------


def test_cached_build_is_instant_and_stable(probe_image: ProbeImage) -> None:
    started = time.monotonic()
    again = build_probe()
    assert time.monotonic() - started < 1.0
    assert again == probe_image
    assert again.kernel.stat().st_size > 1_000_000
    assert again.initrd.read_bytes()[:2] == b"\x1f\x8b"  # gzip
    assert again.kernel_version in again.kernel.parent.name


def test_concurrent_builders_share_one_entry(tmp_path: Path, probe_image: ProbeImage) -> None:
    code = "import sys, pathlib, virtplan_lab.probe as p; print(p.build_probe(pathlib.Path(sys.argv[1])).initrd)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", code, str(tmp_path)]
    builders = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    outputs = [builder.communicate(timeout=300)[0].strip() for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0, 0]
    assert len(set(outputs)) == 1
    entries = [path.name for path in tmp_path.iterdir() if path.is_dir()]
    assert entries == [Path(outputs[0]).parent.name]  # no leftover .build-* directories
    assert Path(outputs[0]).read_bytes() == probe_image.initrd.read_bytes()  # reproducible


def test_parse_guest_line_decodes_the_last_report() -> None:
    log = (
        "[    1.0] virtio_net virtio1 eth0: renamed\r\n"
        "GUEST ip=10.0.0.5 mac=52:54:00:00:00:01 hostname=a instance-id=i-1 value=old mem_kib=1\r\n"
        "GUEST ip=10.0.0.6 mac=52:54:00:00:00:01 hostname=b instance-id=i-2 value=a%20b%25c mem_kib=2\r\n"
        "GUEST-MEM mem_kib=3\n"
    )
    assert parse_guest_line(log) == {
        "ip": "10.0.0.6",
        "mac": "52:54:00:00:00:01",
        "hostname": "b",
        "instance-id": "i-2",
        "value": "a b%c",
        "mem_kib": "2",
    }
    assert parse_guest_line("no report here\nGUESTS ip=1\n") is None
    assert parse_line("GUEST-POWEROFF lease=released") == ("GUEST-POWEROFF", {"lease": "released"})


def test_waiting_fails_fast_on_a_guest_error(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("booting\nGUEST ip=10.0.0.5 mac=m\nGUEST-ERROR reason=no-seed\n")
    started = time.monotonic()
    with pytest.raises(GuestError, match="no-seed"):
        wait_for_guest_line(log, 30, since_offset=len("booting\nGUEST ip=10.0.0.5 mac=m\n"))
    assert time.monotonic() - started < 5


def test_waiting_ignores_a_half_written_line_and_times_out(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_text("GUEST ip=10.0.0.5")  # no newline yet
    with pytest.raises(TimeoutError, match="GUEST"):
        wait_for_guest_line(log, 0.5)
    with log.open("a") as handle:
        handle.write(" mac=m\n")
    assert wait_for_guest_line(log, 5) == {"ip": "10.0.0.5", "mac": "m"}
