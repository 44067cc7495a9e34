"""Boot-to-address time of N probe guests: `virtplan apply` next to `virsh` by hand.

On one private libvirt host (virtplan_lab.testbed.PrivateHost; domain type qemu, i.e. TCG),
for each N (default 2 and 6), in the same run and on the same host:

- virtplan: wall time from starting `virtplan apply --yes` (a new process, as a user runs
  it) on a stack of N probe VMs (128 MiB each, a NAT network, cloud-init seeds; the
  network, the pools and the probe kernel and initrd volumes exist already) until every
  guest has printed its GUEST line (the address it obtained, from inside) on its console;
- by hand: the same N domains (virtplan's own rendered domain XML under other names and
  without virtplan's ownership mark; their disks and seeds made beforehand, untimed)
  defined with `virsh define` and started with `virsh start`, one after the other, until
  every guest has printed its GUEST line.

Every guest has a DHCP reservation (virtplan's from the stack, the hand-made domains'
added with `virsh net-update` beforehand). Addresses from the dynamic range would measure
dnsmasq instead: it pings each new address for 3 s before offering it, one client at a
time, and the probe guest's udhcpc gives up when its request waits more than 6 s, so
with 6 guests booting at once most of them never report.

Each round runs both, alternating which goes first; the guests of one run are removed
before the next starts, so at most N guests run at a time. Prints every figure, the
medians and their ratio (virtplan / by hand).

    .venv/bin/python bench/guest_boot.py [N ...] [--rounds R]     # default: 2 6, 3 rounds
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout, installed or not

CIDR = "10.124.0.0/24"
NETWORK, POOL, BOOT_POOL = "bench-net", "bench-pool", "bench-boot"
BOOT_TIMEOUT = 180.0  # six TCG guests on two cores: far more than they need
STACK = '''\
"""Benchmark stack (written by bench/guest_boot.py): N probe VMs on one host."""
import os
from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume

host = Host("bench", uri="qemu:///system", domain_type="qemu")
net = Network({network!r}, mode="nat", cidr={cidr!r})
pool = Pool({pool!r}, path={pool_path!r})
boot = Pool({boot_pool!r}, path={boot_pool_path!r})  # as in tests/integration/test_guest_support.py
kernel = Volume("probe-vmlinuz", pool=boot, source={kernel!r}, format="raw")
initrd = Volume("probe-initrd.img", pool=boot, source={initrd!r}, format="raw")
prefix = os.environ.get("BENCH_PREFIX", "vp")
for i in range(int(os.environ.get("BENCH_GUESTS", "0"))):
    name, ip = f"{{prefix}}-{{i}}", {subnet!r} + str((10 if prefix == "vp" else 50) + i)
    VM(name, memory="128MiB", max_memory="128MiB", disks=[Volume(name + ".qcow2", pool=pool, size="64MiB")],
       nics=[NIC(net, ip=ip)], kernel=kernel, initrd=initrd, cmdline={cmdline!r},
       cloud_init=CloudInit(user_data="#cloud-config\\nprobe_value: bench\\n"), shutdown_timeout=0)
'''


@dataclass
class Bench:
    host: Any  # virtplan_lab.testbed.PrivateHost
    workdir: Path
    stack_file: Path

    @property
    def pool_path(self) -> Path:
        return self.host.workdir / "pool"

    def env(self, guests: int, prefix: str = "vp") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "VIRTPLAN_URI"}
        env.update(
            BENCH_GUESTS=str(guests), BENCH_PREFIX=prefix, VIRTPLAN_STATE_DIR=str(self.workdir / "state"), NO_COLOR="1"
        )
        return env

    def console_log(self, name: str) -> Path:
        """The VM's console log as seen from outside the host's mount namespace."""
        return Path(f"/proc/{self.host.pid}/root") / (self.pool_path / f"{name}-console.log").relative_to("/")

    def cli(self, guests: int, *args: str) -> None:
        command = [
            sys.executable,
            "-m",
            "virtplan.cli",
            *args,
            str(self.stack_file),
            "--host",
            f"bench={self.host.uri}",
        ]
        result = subprocess.run(command, env=self.env(guests), cwd=REPO, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"virtplan {' '.join(args)} failed:\n{result.stdout}{result.stderr}")

    def engine(self, guests: int, prefix: str = "vp") -> Any:
        from virtplan.engine import Engine
        from virtplan.hosts.records import StateStore
        from virtplan.model import load_stack

        saved = dict(os.environ)
        os.environ.update(BENCH_GUESTS=str(guests), BENCH_PREFIX=prefix)
        try:
            stack = load_stack(self.stack_file, {"bench": self.host.uri})
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return Engine(stack, StateStore(self.workdir / "state" / f"{stack.name}.json", stack.name))

    def converge(self, guests: int) -> None:
        """Apply the stack with `guests` virtplan VMs, in process (setup and clean-up, untimed)."""
        with self.engine(guests) as engine:
            plan, observation = engine.plan()
            if not plan.empty:
                engine.apply(plan, observation)

    def virsh(self, *args: str) -> None:
        subprocess.run(["virsh", "-q", "-c", self.host.uri, *args], check=True, capture_output=True, timeout=120)


def wait_for_guests(bench: Bench, names: list[str], offsets: dict[str, int]) -> None:
    """Return once every guest has printed this boot's GUEST line (GuestError on GUEST-ERROR)."""
    from virtplan_lab.probe import wait_for_guest_line

    deadline = time.monotonic() + BOOT_TIMEOUT
    for name in names:
        wait_for_guest_line(bench.console_log(name), max(deadline - time.monotonic(), 1), offsets.get(name, 0))


def log_offsets(bench: Bench, names: list[str]) -> dict[str, int]:
    from virtplan_lab.probe import log_size

    return {name: log_size(bench.console_log(name)) for name in names}


def run_virtplan(bench: Bench, n: int) -> dict[str, float]:
    """`virtplan apply` of N guests until all reported; then the guests are removed again."""
    names = [f"vp-{i}" for i in range(n)]
    offsets = log_offsets(bench, names)
    started = time.perf_counter()
    bench.cli(n, "apply", "--yes")
    applied = time.perf_counter() - started
    wait_for_guests(bench, names, offsets)
    total = time.perf_counter() - started
    bench.converge(0)  # remove the VMs, their disks, seeds and logs (shutdown_timeout=0: destroy)
    return {"total": total, "commands": applied}


def reservation_update(conn: Any, command: int, hosts: list[str]) -> None:
    """Add or delete DHCP reservations (`virsh net-update ... ip-dhcp-host`), live and in the config."""
    import libvirt

    net = conn.networkLookupByName(NETWORK)
    flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
    for host in hosts:
        net.update(command, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host, flags)


def prepare_by_hand(bench: Bench, n: int) -> tuple[dict[str, str], list[str]]:
    """Disks, seeds and DHCP reservations of the hand-made domains, and their domain XML
    (virtplan's rendering, unmarked); the reservations are returned for clean-up."""
    import libvirt

    from virtplan.documents.seed import build_seed_iso

    conn = libvirt.open(bench.host.uri)
    xmls, reservations = {}, []
    try:
        with bench.engine(n, prefix="hand") as engine:
            renderer = engine.observe().renderer
            pool = conn.storagePoolLookupByName(POOL)
            for vm in engine.stack.vms:
                [mac] = renderer.macs(vm)
                reservations.append(f"<host mac='{mac}' name='{vm.name}' ip='{vm.nics[0].ip}'/>")
                pool.createXML(renderer.volume_xml(vm.disks[0].volume), 0)
                seed = build_seed_iso(renderer.seed_files(vm))
                vol = pool.createXML(
                    f"<volume><name>{vm.seed_volume_name}</name><capacity unit='bytes'>{len(seed)}</capacity>"
                    "<target><format type='raw'/></target></volume>",
                    0,
                )
                stream = conn.newStream(0)
                vol.upload(stream, 0, len(seed), 0)
                stream.sendAll(lambda _stream, nbytes, source: source.read(nbytes), io.BytesIO(seed))
                stream.finish()
                domain = ET.fromstring(renderer.domain_xml(vm))
                metadata = domain.find("metadata")
                if metadata is not None:
                    domain.remove(metadata)  # by hand: no ownership mark
                xmls[vm.name] = ET.tostring(domain, encoding="unicode")
        reservation_update(conn, libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST, reservations)
    finally:
        conn.close()
    return xmls, reservations


def run_by_hand(bench: Bench, n: int) -> dict[str, float]:
    """`virsh define` + `virsh start` per domain until all reported; then everything is removed."""
    import libvirt

    prep_started = time.perf_counter()
    xmls, reservations = prepare_by_hand(bench, n)
    prep = time.perf_counter() - prep_started
    files = {}
    for name, xml in xmls.items():
        files[name] = bench.workdir / f"{name}.xml"
        files[name].write_text(xml)
    names = list(xmls)
    offsets = log_offsets(bench, names)
    started = time.perf_counter()
    for name in names:
        bench.virsh("define", str(files[name]))
        bench.virsh("start", name)
    commands = time.perf_counter() - started
    wait_for_guests(bench, names, offsets)
    total = time.perf_counter() - started

    conn = libvirt.open(bench.host.uri)
    try:
        for name in names:
            domain = conn.lookupByName(name)
            domain.destroy()
            domain.undefine()
        pool = conn.storagePoolLookupByName(POOL)
        pool.refresh(0)  # the console logs were written by virtlogd, behind libvirt's back
        for name in names:
            for volume in (f"{name}.qcow2", f"{name}-cidata.iso", f"{name}-console.log"):
                pool.storageVolLookupByName(volume).delete(0)
        reservation_update(conn, libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, reservations)
    finally:
        conn.close()
    return {"total": total, "commands": commands, "prepare": prep}


def main() -> None:
    from virtplan_lab.probe import build_probe
    from virtplan_lab.testbed import PrivateHost

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[2, 6])
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()

    image = build_probe()
    workdir = Path(tempfile.mkdtemp(prefix="vp-gboot-", dir="/var/tmp"))  # short: socket paths
    host = PrivateHost(workdir / "h", "bench", qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps"))
    stack_file = workdir / "guestboot.py"
    host.start()
    try:
        stack_file.write_text(
            STACK.format(
                network=NETWORK, cidr=CIDR, subnet=CIDR.rsplit(".", 1)[0] + ".", pool=POOL,
                pool_path=str(host.workdir / "pool"), boot_pool=BOOT_POOL, boot_pool_path=str(host.workdir / "boot"),
                kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline,
            )
        )  # fmt: skip
        bench = Bench(host, workdir, stack_file)
        bench.converge(0)  # network, pools, kernel and initrd: in place before any timing
        results: dict[int, dict[str, list[dict[str, float]]]] = {}
        for n in options.sizes:
            results[n] = {"virtplan": [], "hand": []}
            for round_ in range(options.rounds):
                order = ["virtplan", "hand"] if round_ % 2 == 0 else ["hand", "virtplan"]
                for method in order:
                    figures = run_virtplan(bench, n) if method == "virtplan" else run_by_hand(bench, n)
                    results[n][method].append(figures)
                    print(
                        f"N={n} round {round_ + 1} {method:<8}: all GUEST lines after {figures['total']:6.2f} s "
                        f"(commands done after {figures['commands']:5.2f} s)",
                        flush=True,
                    )
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, options.rounds)


def report(results: dict[int, dict[str, list[dict[str, float]]]], rounds: int) -> None:
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nTime until every guest printed its address (median of {rounds} round(s); TCG, {os.cpu_count()} CPUs, "
          f"load average now {load}):")  # fmt: skip
    print(f"{'N':>3} {'virtplan apply':>15} {'virsh by hand':>14} {'ratio':>6}   {'apply cmd':>9} {'virsh cmds':>10}")
    for n, runs in results.items():
        vp = statistics.median(r["total"] for r in runs["virtplan"])
        hand = statistics.median(r["total"] for r in runs["hand"])
        vp_cmd = statistics.median(r["commands"] for r in runs["virtplan"])
        hand_cmd = statistics.median(r["commands"] for r in runs["hand"])
        print(f"{n:>3} {vp:>14.2f}s {hand:>13.2f}s {vp / hand:>6.2f}   {vp_cmd:>8.2f}s {hand_cmd:>9.2f}s")
    print(
        "virtplan apply: plan + create disks, seeds, domains + start (one `virtplan apply --yes` process);\n"
        "virsh by hand: `virsh define` + `virsh start` per domain, disks and seeds made beforehand (untimed)."
    )


if __name__ == "__main__":
    main()
