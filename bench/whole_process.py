"""virtplan as users feel it: whole processes with default flags, next to raw libvirt-python floors.

On one private libvirt host (virtplan_lab.testbed.PrivateHost; domain type qemu, i.e. TCG)
this times whole processes, interpreter start-up included, from start to exit:

- converge / destroy, N running VMs (one NAT network, one dir pool, one 16 MiB qcow2
  volume per VM; 64 MiB blank guests, `shutdown_timeout=0`): `virtplan apply --yes` and
  `virtplan destroy --yes --allow-destroy` next to `bench/raw_floor.py converge|destroy`,
  which defines the same documents (virtplan's rendering, unmarked) with 8 threads;
- no-op plan: `virtplan plan` on the converged stack (N running VMs, and N defined but
  stopped VMs for larger N) next to `bench/raw_floor.py read`: python + libvirt-python
  listing every kind and fetching every declared object's XML;
- memory: the peak RSS of `virtplan plan` for N resources (N/4 stopped VMs with 3 volumes
  each, a network and a pool), on an empty host (everything to create) and once deployed
  (no changes): the process's own peak (VmHWM), reported as it exits (`PEAK_PROBE`).

Runs alternate (A B A B ..., the order rotating every round) so that load from other work
on the machine falls on every side alike; every figure is a median with its spread, and
the load average is printed with each phase. `--before REV` adds the same runs of another
commit of this repository (unpacked with `git archive`, or a folder holding a checkout) as
a "before" column, run with this checkout's virtual environment.
The larger no-op and memory stacks are deployed and removed by virtplan's engine in this
process with their records written at once (set-up, untimed: see `Bench.deploy`).

Every process runs with byte-code caching on (PYTHONDONTWRITEBYTECODE is removed from its
environment, and each checkout is compiled first, as `pip install` does), its own virtplan
cache folder, and one untimed warm-up run per side and phase.

    .venv/bin/python bench/whole_process.py                    # all phases (20 to 40 minutes here)
    .venv/bin/python bench/whole_process.py --quick            # N=10 and a no-op at N=50 (minutes)
    .venv/bin/python bench/whole_process.py --before 27d6b17 --phases noop --noop-sizes 50 1000
    options: --sizes 10 50  --noop-sizes 50 1000  --memory-sizes 1000 5000 10000  --rounds 5
             --phases converge,noop,memory
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # measure this checkout, installed or not
RAW = REPO / "bench" / "raw_floor.py"
FLOOR_THREADS = 8

STACK = '''\
"""Benchmark stack (written by bench/whole_process.py)."""
import os
from virtplan import VM, Host, Network, Pool, Volume

workers = {"workers": int(os.environ["WP_WORKERS"])} if os.environ.get("WP_WORKERS") else {}  # default: none given
Host("bench", uri="qemu:///system", domain_type="qemu", **workers)
net = Network("wp-net", mode="nat", cidr="10.126.0.0/16")
pool = Pool("wp-pool", path=os.environ["WP_POOL"])
state = os.environ.get("WP_STATE", "running")
for i in range(int(os.environ["WP_VMS"])):
    disks = [Volume(f"wp-{i:05d}-{d}.qcow2", pool=pool, size="16MiB") for d in range(int(os.environ["WP_DISKS"]))]
    VM(f"wp-{i:05d}", memory="64MiB", disks=disks, nics=[net], state=state, shutdown_timeout=0)
'''


@dataclass
class Run:
    seconds: float  # wall clock, start to exit
    rss_mb: float  # peak resident set size
    cpu: float = 0.0  # user + system CPU seconds of the process (what load on the machine does not inflate)
    child_rss_mb: float = 0.0  # the largest process it forked (a no-op plan's reading child), if measured


@dataclass
class Side:
    """One way of doing the work: a virtplan checkout, or the raw floor."""

    name: str
    checkout: Path | None  # None: the raw floor
    runs: dict[str, list[Run]] = field(default_factory=dict)

    def add(self, phase: str, run: Run) -> None:
        self.runs.setdefault(phase, []).append(run)


#: `python -c PEAK_PROBE ARGS...` runs `virtplan ARGS...` and, as it exits, writes to the
#: file $WP_PEAK_FILE the peak resident set of its own address space (VmHWM) and the largest
#: of the processes it forked and reaped (its reading child), in kB. The ru_maxrss that
#: wait4 returns is no measure of the first: Python starts a child with vfork, and the
#: kernel counts the parent's (this benchmark's) resident set into the child's maximum.
PEAK_PROBE = """
import atexit, os, resource, sys

def report():
    with open("/proc/self/status") as status:
        peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["WP_PEAK_FILE"], "w") as out:
        out.write(f"{peak} {children}")

atexit.register(report)
sys.argv = ["virtplan", *sys.argv[1:]]
from virtplan.cli import main
main()
"""


def timed(command: list[str], env: dict[str, str], cwd: Path) -> Run:
    """Run a whole process; its wall time and CPU (raises with its output on failure). Its
    `rss_mb` is wait4's ru_maxrss, which includes this process's own resident set (see
    PEAK_PROBE): `Bench.peak` measures a virtplan process's own peak."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{output.decode(errors='replace')}")
    return Run(seconds, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)


class Bench:
    def __init__(self, host: Any, workdir: Path):
        self.host, self.workdir = host, workdir
        self.stack_file = workdir / "wp.py"
        self.stack_file.write_text(STACK)
        self.pool_path = host.workdir / "wp-pool"

    def env(self, vms: int, disks: int = 1, state: str = "running", side: Side | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "VIRTPLAN_URI")}
        env.update(WP_VMS=str(vms), WP_DISKS=str(disks), WP_STATE=state, WP_POOL=str(self.pool_path))
        env.update(VIRTPLAN_URI=self.host.uri, VIRTPLAN_STATE_DIR=str(self.workdir / "state"), NO_COLOR="1")
        if side is not None and side.checkout is not None:
            env["PYTHONPATH"] = str(side.checkout)
            env["VIRTPLAN_CACHE_DIR"] = str(self.workdir / f"cache-{side.name}")
        return env

    def virtplan(self, side: Side, env: dict[str, str], *args: str) -> Run:
        assert side.checkout is not None
        command = [sys.executable, "-m", "virtplan.cli", *args]
        return timed(command, env, side.checkout)

    def peak(self, side: Side, env: dict[str, str], *args: str) -> Run:
        """`virtplan ARGS` timed, with the peak resident set of its own process and, apart,
        of the largest process it forked (a no-op plan's reading child)."""
        assert side.checkout is not None
        peak_file = self.workdir / "peak-kb"
        peak_file.unlink(missing_ok=True)
        run = timed([sys.executable, "-c", PEAK_PROBE, *args], dict(env, WP_PEAK_FILE=str(peak_file)), side.checkout)
        own, child = (int(kb) / 1024 for kb in peak_file.read_text().split())
        return Run(run.seconds, own, run.cpu, child)

    def floor(self, action: str, spec: Path) -> Run:
        env = self.env(0)
        return timed([sys.executable, str(RAW), action, str(spec), "--threads", str(FLOOR_THREADS)], env, REPO)

    def spec(self, vms: int, state: str = "running") -> Path:
        """virtplan's documents for the stack (no ownership marks) for the raw floor (untimed)."""
        from virtplan.engine import Engine
        from virtplan.model import load_stack

        path = self.workdir / f"spec-{vms}-{state}.json"
        if path.exists():
            return path
        saved = dict(os.environ)
        os.environ.update(self.env(vms, state=state))
        try:
            with Engine(load_stack(self.stack_file, {"bench": self.host.uri})) as engine:
                renderer = engine.observe().renderer
                stack = engine.stack
                [net], [pool] = stack.networks, stack.pools
                vms_out = []
                for vm in stack.vms:
                    root = ET.fromstring(renderer.domain_xml(vm))
                    for metadata in root.findall("metadata"):
                        root.remove(metadata)
                    volume = vm.disks[0].volume
                    vms_out.append({
                        "name": vm.name, "xml": ET.tostring(root, encoding="unicode"), "running": vm.state == "running",
                        "volume": {"name": volume.name, "xml": renderer.volume_xml(volume)},
                    })  # fmt: skip
                doc = {
                    "uri": self.host.uri,
                    "network": {"name": net.name, "xml": _unmarked(renderer.network_xml(net))},
                    "pool": {"name": pool.name, "xml": renderer.pool_xml(pool)},
                    "vms": vms_out,
                }
        finally:
            os.environ.clear()
            os.environ.update(saved)
        path.write_text(json.dumps(doc))
        return path

    def deploy(self, env: dict[str, str], destroy: bool = False) -> float:
        """Set-up and clean-up of the larger no-op and memory runs (untimed in the tables):
        apply (or destroy) the stack with virtplan's engine in this process, its records kept
        in memory and written to the host's ledger in one write at the end. (`virtplan apply`
        writes each record as it goes; at thousands of objects that costs minutes here.)"""
        from virtplan.engine import Engine
        from virtplan.model import load_stack

        saved = dict(os.environ)
        os.environ.update(env)
        started = time.perf_counter()
        try:
            stack = load_stack(self.stack_file, {"bench": self.host.uri})
            probe = Engine(stack)
            buffered = BufferedRecords(probe.host_records)
            with Engine(stack, store=buffered) as engine:
                plan, observation = engine.plan(destroy=destroy)
                engine.apply(plan, observation)
            buffered.flush()
            probe.host_records.compact()
            probe.close()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return time.perf_counter() - started

    def assert_empty(self) -> None:
        """Nothing of the benchmark is left on the host (each run starts from empty)."""
        import libvirt

        conn = libvirt.open(self.host.uri)
        try:
            doms = [d.name() for d in conn.listAllDomains() if d.name().startswith("wp-")]
            nets = [n.name() for n in conn.listAllNetworks() if n.name() == "wp-net"]
            pools = [p.name() for p in conn.listAllStoragePools() if p.name() == "wp-pool"]
        finally:
            conn.close()
        if doms or nets or pools:
            raise SystemExit(f"the host is not empty: {len(doms)} domains, networks {nets}, pools {pools}")


class BufferedRecords:
    """A stack's records (virtplan.hosts.records.Records) held in memory, written in one
    ledger write per host by `flush()`. Thread-safe, as apply's workers share it."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.lock = threading.RLock()
        self.current: dict[str, dict[str, dict[str, Any]]] = {}
        self.sets: dict[str, dict[str, dict[str, Any]]] = {}
        self.drops: dict[str, set[str]] = {}

    def _of(self, uri: str) -> dict[str, dict[str, Any]]:
        if uri not in self.current:
            self.current[uri] = self.inner.records(uri)
        return self.current[uri]

    def records(self, uri: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return {a: dict(r) for a, r in self._of(uri).items()}

    def view(self, uri: str) -> dict[str, dict[str, Any]]:
        with self.lock:
            return dict(self._of(uri))

    def get(self, uri: str, address: str) -> dict[str, Any] | None:
        with self.lock:
            record = self._of(uri).get(address)
            return dict(record) if record is not None else None

    def put(self, uri: str, address: str, **fields: Any) -> None:
        with self.lock:
            self._of(uri).setdefault(address, {}).update(fields)
            self.sets.setdefault(uri, {}).setdefault(address, {}).update(fields)
            self.drops.setdefault(uri, set()).discard(address)

    def put_many(self, uri: str, records: dict[str, dict[str, Any]]) -> None:
        with self.lock:
            for address, fields in records.items():
                self.put(uri, address, **fields)

    def forget(self, uri: str, address: str) -> None:
        with self.lock:
            self._of(uri).pop(address, None)
            self.sets.setdefault(uri, {}).pop(address, None)
            self.drops.setdefault(uri, set()).add(address)

    def flush(self) -> None:
        with self.lock:
            for uri in self.current:
                self.inner.ledger(uri).update(self.sets.get(uri, {}), self.drops.get(uri, set()))


def _unmarked(xml: str) -> str:
    root = ET.fromstring(xml)
    for metadata in root.findall("metadata"):
        root.remove(metadata)
    return ET.tostring(root, encoding="unicode")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def rotate(items: list[Side], by: int) -> list[Side]:
    by %= len(items)
    return items[by:] + items[:by]


# -- phases ----------------------------------------------------------------------------
def phase_converge(bench: Bench, sides: list[Side], n: int, rounds: int) -> None:
    spec = bench.spec(n)
    env = bench.env(n)
    print(f"\n== converge / destroy, N={n} (load {load()})", flush=True)
    bench.assert_empty()
    for side in sides:  # warm-up: byte-code, caches, virtplan's records pool
        if side.checkout is None:
            bench.floor("converge", spec), bench.floor("destroy", spec)
        else:
            bench.virtplan(side, env, "apply", str(bench.stack_file), "--yes")
            bench.virtplan(side, env, "destroy", str(bench.stack_file), "--yes", "--allow-destroy")
        bench.assert_empty()
    for round_ in range(rounds):
        for side in rotate(sides, round_):
            if side.checkout is None:
                up, down = bench.floor("converge", spec), bench.floor("destroy", spec)
            else:
                up = bench.virtplan(side, env, "apply", str(bench.stack_file), "--yes")
                down = bench.virtplan(side, env, "destroy", str(bench.stack_file), "--yes", "--allow-destroy")
            bench.assert_empty()
            side.add(f"converge {n}", up)
            side.add(f"destroy {n}", down)
            print(f"  round {round_ + 1} {side.name:<8} converge {up.seconds:6.2f} s  destroy {down.seconds:6.2f} s"
                  f"  (load {load()})", flush=True)  # fmt: skip


def phase_noop(bench: Bench, sides: list[Side], n: int, rounds: int) -> None:
    state = "running" if n <= 50 else "stopped"
    spec = bench.spec(n, state)
    env = bench.env(n, state=state)
    after = next(s for s in sides if s.checkout is not None)
    print(f"\n== no-op plan, N={n} {state} VMs (load {load()})", flush=True)
    bench.assert_empty()
    if n <= 50:
        took = bench.virtplan(after, env, "apply", str(bench.stack_file), "--yes").seconds
        print(f"  deployed with virtplan apply in {took:.1f} s", flush=True)
    else:
        print(f"  deployed in {bench.deploy(env):.1f} s (virtplan's engine, records written at once)", flush=True)
    try:
        for side in sides:  # warm-up
            run_noop(bench, side, env, spec)
        for round_ in range(rounds):
            for side in rotate(sides, round_):
                run = run_noop(bench, side, env, spec)
                side.add(f"no-op {n}", run)
            line = "  ".join(f"{s.name} {s.runs[f'no-op {n}'][-1].seconds:.3f} s" for s in sides)
            print(f"  round {round_ + 1}: {line}  (load {load()})", flush=True)
    finally:
        if n <= 50:
            bench.virtplan(after, env, "destroy", str(bench.stack_file), "--yes", "--allow-destroy")
        else:
            bench.deploy(env, destroy=True)
    bench.assert_empty()


def run_noop(bench: Bench, side: Side, env: dict[str, str], spec: Path) -> Run:
    if side.checkout is None:
        return bench.floor("read", spec)
    return bench.virtplan(side, env, "plan", str(bench.stack_file))


def phase_memory(bench: Bench, sides: list[Side], n: int) -> None:
    """Peak RSS of `virtplan plan` for n resources: on an empty host, then deployed."""
    vms = n // 4
    env = bench.env(vms, disks=3, state="stopped")
    virtplan_sides = [s for s in sides if s.checkout is not None]
    print(f"\n== memory, {vms * 4 + 2} resources ({vms} stopped VMs x 3 volumes, a network, a pool; load {load()})",
          flush=True)  # fmt: skip
    bench.assert_empty()
    for side in virtplan_sides:
        bench.virtplan(side, env, "plan", str(bench.stack_file))  # warm-up (byte-code)
        empty = bench.peak(side, env, "plan", str(bench.stack_file))
        side.add(f"rss empty {n}", empty)
        print(f"  {side.name:<8} plan, empty host:  {empty.rss_mb:6.1f} MB  {empty.seconds:6.2f} s"
              f"  (reading child {empty.child_rss_mb:.1f} MB)", flush=True)  # fmt: skip
    print(f"  deployed in {bench.deploy(env):.1f} s (virtplan's engine, records written at once)", flush=True)
    try:
        for side in virtplan_sides:
            bench.virtplan(side, env, "plan", str(bench.stack_file))  # warm-up (caches)
            noop = bench.peak(side, env, "plan", str(bench.stack_file))
            side.add(f"rss deployed {n}", noop)
            print(f"  {side.name:<8} plan, deployed:    {noop.rss_mb:6.1f} MB  {noop.seconds:6.2f} s"
                  f"  (reading child {noop.child_rss_mb:.1f} MB)", flush=True)  # fmt: skip
    finally:
        bench.deploy(env, destroy=True)
    bench.assert_empty()


# -- report ----------------------------------------------------------------------------
def spread(runs: list[Run]) -> str:
    xs = sorted(r.seconds for r in runs)
    return f"{statistics.median(xs):.3f}" if xs[-1] < 1 else f"{statistics.median(xs):.1f}"


def report(sides: list[Side]) -> None:
    floor = next((s for s in sides if s.checkout is None), None)
    virtplans = [s for s in sides if s.checkout is not None]
    phases = [p for p in (floor.runs if floor else {}) if not p.startswith("rss")]
    if phases and floor is not None:
        print("\nWhole process, default flags: median seconds [min-max] (ratio to the floor)")
        header = f"{'phase':<16}" + "".join(f"{s.name:>30}" for s in virtplans) + f"{'raw floor':>22}"
        print(header)
        for phase in phases:
            base = statistics.median(r.seconds for r in floor.runs[phase])
            cells = []
            for side in virtplans:
                runs = side.runs.get(phase, [])
                if not runs:
                    cells.append(f"{'-':>30}")
                    continue
                med = statistics.median(r.seconds for r in runs)
                cells.append(f"{_fmt(runs):>22} ({med / base:4.2f}x)")
            print(f"{phase:<16}" + "".join(cells) + f"{_fmt(floor.runs[phase]):>22}")
        print(f"runs per cell: {len(floor.runs[phases[0]])}; floor: bench/raw_floor.py with {FLOOR_THREADS} threads")
        print("CPU seconds of the process (user + system), medians:")
        for phase in phases:
            cells = [
                f"{side.name} {statistics.median(r.cpu for r in side.runs[phase]):.3f}"
                for side in sides
                if side.runs.get(phase)
            ]
            print(f"  {phase:<16}" + "   ".join(cells))
    rss = [p for s in virtplans for p in s.runs if p.startswith("rss")]
    if rss:
        print("\nPeak RSS of the `virtplan plan` process (MB; seconds; its reading child's peak apart)")
        for phase in dict.fromkeys(rss):
            n = int(phase.rsplit(" ", 1)[1])
            cells = []
            for side in virtplans:
                run = side.runs.get(phase, [None])[0]
                cells.append(f"{side.name} {run.rss_mb:6.1f} MB ({run.rss_mb * 1024 / n:5.1f} KB/resource, "
                             f"{run.seconds:5.2f} s; child {run.child_rss_mb:.1f} MB)" if run
                             else f"{side.name} -")  # fmt: skip
            print(f"  {phase:<20} " + "   ".join(cells))


def _fmt(runs: list[Run]) -> str:
    xs = sorted(r.seconds for r in runs)
    med = statistics.median(xs)
    digits = 3 if xs[-1] < 1 else 1
    return f"{med:.{digits}f} [{xs[0]:.{digits}f}-{xs[-1]:.{digits}f}]"


def checkout_of(rev: str, workdir: Path) -> Path:
    """Another commit of this repository, unpacked (not a worktree) and byte-compiled; or
    an unpacked checkout, if `rev` is a directory."""
    if Path(rev).is_dir():
        compileall.compile_dir(str(Path(rev) / "virtplan"), quiet=1)
        return Path(rev).resolve()
    target = workdir / f"checkout-{rev}"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    compileall.compile_dir(str(target / "virtplan"), quiet=1)
    return target


def main() -> None:
    from virtplan_lab.testbed import PrivateHost

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="*", type=int, default=[10, 50])
    parser.add_argument("--noop-sizes", nargs="*", type=int, default=[50, 1000])
    parser.add_argument("--memory-sizes", nargs="*", type=int, default=[1000, 5000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--phases", default="converge,noop,memory")
    parser.add_argument("--before", metavar="REV", help="also run this commit (or checkout folder): a 'before' column")
    parser.add_argument("--quick", action="store_true", help="--sizes 10 --noop-sizes 50 --phases converge,noop")
    options = parser.parse_args()
    if options.quick:
        options.sizes, options.noop_sizes, options.phases = [10], [50], "converge,noop"
    phases = set(options.phases.split(","))

    workdir = Path(tempfile.mkdtemp(prefix="vp-whole-", dir="/var/tmp"))  # short: socket paths
    compileall.compile_dir(str(REPO / "virtplan"), quiet=1)
    sides = [Side("virtplan", REPO)]
    if options.before:
        sides = [Side("before", checkout_of(options.before, workdir)), Side("after", REPO)]
    sides.append(Side("floor", None))
    host = PrivateHost(workdir / "h", "bench", qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps"))
    host.start()
    print(f"{os.cpu_count()} CPUs; {len(sides)} sides: {', '.join(s.name for s in sides)}; load {load()}", flush=True)
    try:
        bench = Bench(host, workdir)
        steps: list[Callable[[], Any]] = []
        if "converge" in phases:
            steps += [lambda n=n: phase_converge(bench, sides, n, options.rounds) for n in options.sizes]
        if "noop" in phases:
            steps += [lambda n=n: phase_noop(bench, sides, n, max(options.rounds, 5)) for n in options.noop_sizes]
        if "memory" in phases:
            steps += [lambda n=n: phase_memory(bench, sides, n) for n in options.memory_sizes]
        for step in steps:
            step()
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        report(sides)
        print(f"load average at the end: {load()}")


if __name__ == "__main__":
    main()
