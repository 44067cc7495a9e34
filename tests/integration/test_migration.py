"""VMs moving between two lab hosts (each its own machine on the lab network, reached over
qemu+ssh with verified host keys), planned and applied by virtplan as `migrate`:

- a running probe guest that counts (GUEST-TICK every 0.1 s) moves live when its declared
  host changes, and back when its placement no longer allows the host it is on: the count
  goes on without a reboot, with the same UUID, MAC and address, answering ping on the
  destination's network; the source keeps neither the domain nor its volumes nor the
  stack's records of them; its volumes are on the destination, owned by the stack there
  (the next plan is empty). Migration time and the guest's downtime (the largest gap
  between two ticks, timed as they reach the console logs) are printed;
- a stopped VM moves by copying its disk files host to host: the destination's disk holds
  exactly the bytes the source's held.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

from test_guest_support import wait_until
from test_remote_transports import download

from virtplan.engine import Engine
from virtplan.model import load_stack
from virtplan.plan.changes import Action, Plan
from virtplan.views.text import plan_text
from virtplan_lab.lab import Lab
from virtplan_lab.probe import GUEST, ProbeImage, wait_for_event
from virtplan_lab.testbed import PrivateHost

LabHosts = Callable[..., list[PrivateHost]]
POOL_PATH = "/var/lib/libvirt/images/mig"  # the same path on both hosts, private to each
TICK = 0.1

PROGRAM = '''\
"""Two lab hosts; the probe guest `mover` runs where WHERE says."""
from virtplan import NIC, VM, CloudInit, Host, Network, Placement, Pool, Volume

a = Host("a", uri={a!r}, domain_type="qemu", memory="1GiB", vcpus=2)
b = Host("b", uri={b!r}, domain_type="qemu", memory="1GiB", vcpus=2)
hosts = [a, b]
net = Network("mig-net", host=hosts, cidr="10.71.0.0/24")
pool = Pool("mig-pool", host=hosts, path={pool!r})
boot = Pool("mig-boot", host=hosts, path={pool!r} + "-boot")
kernel = Volume("probe-vmlinuz", pool=boot, source={kernel!r}, format="raw")
initrd = Volume("probe-initrd.img", pool=boot, source={initrd!r}, format="raw")
VM(
    "mover",
    host={where},
    memory="128MiB",
    disks=[Volume("mover.qcow2", pool=pool, size="64MiB")],
    nics=[NIC(net, ip="10.71.0.10")],
    kernel=kernel,
    initrd=initrd,
    cmdline={cmdline!r},
    cloud_init=CloudInit(hostname="mover", user_data="#cloud-config\\nprobe_value: m\\nprobe_tick: {tick}\\n"),
    shutdown_timeout=10,
)
VM("parked", host={parked}, state="stopped", memory="64MiB",
   disks=[Volume("parked.raw", pool=pool, source={data!r}, format="raw")], console_log=False)
'''


@dataclass
class Tick:
    arrived: float  # this machine's clock when the line reached a console log
    host: str
    seq: int
    uptime: float
    ip: str
    mac: str


_TICK = re.compile(r"^GUEST-TICK seq=(\d+) uptime=([0-9.]+) ip=(\S*) mac=(\S+)$")


class TickWatch:
    """Tails the guest's console log on each host (read from outside the hosts' namespaces)
    every few milliseconds and timestamps each tick as it arrives."""

    def __init__(self, logs: dict[str, Path]) -> None:
        self.logs, self.ticks = logs, []  # type: list[Tick]
        self.offsets = dict.fromkeys(logs, 0)
        self.inodes: dict[str, int] = {}  # a log deleted and made again is read from its start
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            for host, path in self.logs.items():
                try:
                    with path.open("rb") as f:
                        inode = os.fstat(f.fileno()).st_ino
                        if self.inodes.setdefault(host, inode) != inode:
                            self.inodes[host], self.offsets[host] = inode, 0
                        f.seek(self.offsets[host])
                        data = f.read()
                except FileNotFoundError:
                    continue  # not yet there, or deleted with the VM's source side
                now = time.monotonic()
                complete = data[: data.rfind(b"\n") + 1]
                self.offsets[host] += len(complete)
                for line in complete.decode(errors="replace").splitlines():
                    m = _TICK.match(line.strip())
                    if m:
                        self.ticks.append(Tick(now, host, int(m[1]), float(m[2]), m[3], m[4]))
            time.sleep(0.005)

    def __enter__(self) -> TickWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def after(self, moment: float) -> list[Tick]:
        return [t for t in self.ticks if t.arrived > moment]

    def wait_on(self, host: str, count: int, timeout: float = 60) -> None:
        assert wait_until(lambda: sum(t.host == host for t in self.ticks) >= count, timeout), self.ticks[-5:]


@dataclass
class Pair:
    a: PrivateHost
    b: PrivateHost
    file: Path
    image: ProbeImage
    data: Path

    def declare(self, where: str, parked: str = "a") -> None:
        self.file.write_text(PROGRAM.format(
            a=self.a.ssh_uri, b=self.b.ssh_uri, pool=POOL_PATH, kernel=str(self.image.kernel),
            initrd=str(self.image.initrd), cmdline=self.image.cmdline, where=where, tick=TICK,
            parked=parked, data=str(self.data),
        ))  # fmt: skip

    def plan(self) -> Plan:
        with Engine(load_stack(self.file)) as engine:
            return engine.plan()[0]

    def apply(self) -> tuple[Plan, dict[str, float]]:
        """Plan and apply; the plan and how long each change took."""
        with Engine(load_stack(self.file)) as engine:
            plan, observation = engine.plan()
            report = engine.apply(plan, observation)
        return plan, {o.address: o.seconds for o in report.outcomes}

    def log(self, host: PrivateHost, name: str = "mover") -> Path:
        return host.workdir / "lib" / "images" / "mig" / f"{name}-console.log"


def worst_gap(ticks: list[Tick]) -> tuple[float, float]:
    """The largest gap between two consecutive ticks as they arrived, and how much the guest's
    own clock advanced across it (it stands still while the guest is paused)."""
    ordered = sorted(ticks, key=lambda t: t.seq)
    return max((y.arrived - x.arrived, y.uptime - x.uptime) for x, y in pairwise(ordered))


def answers_ping(host: PrivateHost, image: ProbeImage, ip: str, mac: str) -> None:
    assert host.pid is not None
    netns = ["nsenter", f"--net=/proc/{host.pid}/ns/net"]
    ping = subprocess.run([*netns, str(image.busybox), "ping", "-c", "2", "-w", "20", ip],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr
    neigh = subprocess.run([*netns, "ip", "neigh", "show", ip], capture_output=True, text=True, timeout=10)
    assert f"lladdr {mac}" in neigh.stdout, neigh.stdout


def domains(conn: Any) -> list[str]:
    return sorted(d.name() for d in conn.listAllDomains())


def volumes(conn: Any, pool: str = "mig-pool") -> list[str]:
    return sorted(conn.storagePoolLookupByName(pool).listVolumes())


def records(conn: Any) -> str:
    """Everything in virtplan's records pool on a host (the ledgers' segments, as text)."""
    from virtplan.hosts.ledger import DEFAULT_POOL

    pool = conn.storagePoolLookupByName(DEFAULT_POOL)
    pool.refresh(0)
    out = []
    for name in pool.listVolumes():
        stream = conn.newStream(0)
        pool.storageVolLookupByName(name).download(stream, 0, 0, 0)
        chunks: list[bytes] = []
        stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
        stream.finish()
        out.append(b"".join(chunks).decode(errors="replace"))
    return "\n".join(out)


def test_a_running_guest_moves_live_and_back_and_a_stopped_one_moves_its_disk(
    lab_hosts: LabHosts, netlab: Lab, probe_image: ProbeImage, tmp_path: Path
) -> None:
    a, b = lab_hosts(2, ssh=True)
    data = tmp_path / "parked.raw"
    data.write_bytes(os.urandom(2 * 1024 * 1024 + 512))
    pair = Pair(a, b, tmp_path / f"mig{uuid.uuid4().hex[:8]}.py", probe_image, data)
    conns = {"a": a.connect(), "b": b.connect()}
    try:
        pair.declare("a")
        pair.apply()
        report = wait_for_event(pair.log(a), [GUEST], 120).fields
        assert report["ip"] == "10.71.0.10"
        first_uuid = conns["a"].lookupByName("mover").UUIDString()
        mac = report["mac"]

        with TickWatch({"a": pair.log(a), "b": pair.log(b)}) as watch:
            watch.wait_on("a", 10)

            # 1. The declared host changes: one live migrate, not destructive.
            pair.declare("b")
            plan = pair.plan()
            [move] = [c for c in plan.changes if c.action == Action.MIGRATE]
            assert move.address == "b/vm/mover" and move.destructive is None
            assert move.move is not None and move.move["live"] and move.move["source"] == "a"
            assert move.move["copy_bytes"] > 0
            text = plan_text(plan)
            assert "migrate: host changed: moves live from a to b" in text
            began = time.monotonic()
            _, took = pair.apply()
            watch.wait_on("b", 20)
            first = summary("a -> b (declared host)", watch.after(began - 2), took["b/vm/mover"])

            # 2. Its placement leaves only a: placement moves it back, live, and says why.
            pair.declare("Placement([a])")
            plan = pair.plan()
            [move] = [c for c in plan.changes if c.action == Action.MIGRATE]
            assert move.address == "a/vm/mover" and move.move is not None and move.move["live"]
            assert move.placement is not None and move.placement.startswith("moves, as b is no longer one of its hosts")
            began = time.monotonic()
            _, took = pair.apply()
            watch.wait_on("a", 10 + 20)
            back = summary("b -> a (placement)", [t for t in watch.after(began - 2)], took["a/vm/mover"])

        ticks = sorted(watch.ticks, key=lambda t: t.seq)
        seqs = [t.seq for t in ticks]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a tick was lost or the count restarted"
        assert all(x.uptime < y.uptime for x, y in pairwise(ticks)), "uptime went back: a reboot"
        assert {t.ip for t in ticks} == {"10.71.0.10"} and {t.mac for t in ticks} == {mac}
        assert {t.host for t in ticks} == {"a", "b"}
        assert b"GUEST ip=" not in pair.log(a).read_bytes()  # no second boot since the log began again
        mover = conns["a"].lookupByName("mover")
        assert mover.UUIDString() == first_uuid and mover.isActive() and mover.isPersistent()
        answers_ping(a, probe_image, "10.71.0.10", mac)
        # The source (b, after moving back) has neither the domain nor its volumes nor records of them.
        assert "mover" not in domains(conns["b"])
        assert not [v for v in volumes(conns["b"]) if v.startswith("mover")]
        assert "b/vm/mover" not in records(conns["b"]) and "b/volume/mig-pool/mover" not in records(conns["b"])
        assert {"mover.qcow2", "mover-cidata.iso"} <= set(volumes(conns["a"]))
        assert "a/volume/mig-pool/mover.qcow2" in records(conns["a"])
        assert pair.plan().empty  # owned by the stack where it is now

        # 3. A stopped VM moves by copying its disk file: the same bytes on b.
        pair.declare("Placement([a])", parked="b")
        plan = pair.plan()
        [move] = [c for c in plan.changes if c.action == Action.MIGRATE]
        assert move.move is not None and not move.move["live"] and move.destructive is None
        assert move.move["copy_bytes"] >= data.stat().st_size
        _, took = pair.apply()
        assert "parked" not in domains(conns["a"]) and "parked.raw" not in volumes(conns["a"])
        parked = conns["b"].lookupByName("parked")
        assert not parked.isActive() and parked.isPersistent()
        assert download(conns["b"], "mig-pool", "parked.raw") == data.read_bytes()
        assert pair.plan().empty
        print(f"\n{first}\n{back}\nstopped VM with a {data.stat().st_size} B disk moved in {took['b/vm/parked']:.2f} s")
    finally:
        for conn in conns.values():
            conn.close()


def summary(label: str, ticks: list[Tick], seconds: float) -> str:
    """One line: migration time, the guest's downtime (largest gap between ticks), ticks seen."""
    assert len({t.host for t in ticks}) == 2, f"ticks from one host only: {ticks[:3]}"
    worst, guest = worst_gap(ticks)
    assert worst < 10, f"the guest stalled for {worst:.2f} s"
    return (f"live migration {label}: {seconds:.2f} s (apply of the change), guest downtime {worst * 1000:.0f} ms "
            f"(largest gap between ticks, printed every {TICK * 1000:.0f} ms; the guest's clock advanced "
            f"{guest * 1000:.0f} ms across it), {len(ticks)} ticks")  # fmt: skip


def test_plan_commands_print_the_virsh_twin_of_a_move(
    lab_hosts: LabHosts, netlab: Lab, probe_image: ProbeImage, tmp_path: Path
) -> None:
    """`plan --commands` of a move: the destination's volumes made first, then `virsh migrate
    --live --p2p --persistent --undefinesource --copy-storage-all` from the source's URI."""
    a, b = lab_hosts(2, ssh=True)
    data = tmp_path / "parked.raw"
    data.write_bytes(b"\0" * 4096)
    pair = Pair(a, b, tmp_path / f"cmd{uuid.uuid4().hex[:8]}.py", probe_image, data)
    pair.declare("a")
    pair.apply()
    pair.declare("b", parked="b")
    env = netlab.env({**os.environ, "NO_COLOR": "1", "COLUMNS": "250"})
    proc = subprocess.run([sys.executable, "-m", "virtplan.cli", "plan", str(pair.file), "--commands"],
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "-> vm mover  migrate: host changed: moves live from a to b" in out
    assert "-> vm parked  migrate: host changed: moves stopped from a to b" in out
    assert "virsh vol-create-as mig-pool mover.qcow2 67108864 --format qcow2" in out
    assert (f"virsh -c {a.ssh_uri} migrate --live --p2p --persistent --undefinesource --copy-storage-all mover "
            f"{b.ssh_uri}") in out  # fmt: skip
    assert f"virsh -c {a.ssh_uri} vol-download --pool mig-pool parked.raw" in out
    assert f"virsh -c {a.ssh_uri} vol-delete --pool mig-pool mover.qcow2" in out
    with Engine(load_stack(pair.file)) as engine:  # leave nothing running
        engine.apply(*engine.plan(destroy=True))
    conns = [a.connect(), b.connect()]
    try:
        assert [domains(c) for c in conns] == [[], []]
    finally:
        for c in conns:
            c.close()
