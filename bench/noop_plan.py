"""No-op plan of N declared VMs against the raw read floor, on a private libvirt host.

For each N: apply a stack of N stopped VMs (defined, not started), then time
- the floor: listAllDomains + one inactive XMLDesc per domain (raw libvirt-python);
- virtplan's no-op plan in-process (load stack, observe, render, parse, diff);
- the whole `virtplan plan` process (interpreter start-up included), for reference.
Prints the figures and the plan/floor ratio (target: <= 1.5 at N=1000, linear in N).

    .venv/bin/python bench/noop_plan.py [N ...]     # default: 100 1000
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STACK = """
import os
from virtplan import VM, Host, Network
Host("bench", uri="qemu:///system", domain_type="qemu")
net = Network("bench-net", cidr="10.123.0.0/16")
for i in range(int(os.environ["VIRTPLAN_BENCH_N"])):
    VM(f"bench-{i:04d}", memory="64MiB", max_memory="128MiB", nics=[net], state="stopped",
       description=f"benchmark VM {i}", shutdown_timeout=0)
"""


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def floor(uri: str) -> None:
    import libvirt

    conn = libvirt.open(uri)
    for dom in conn.listAllDomains():
        dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    conn.close()


def measure(n: int, uri: str, workdir: Path) -> dict[str, float]:
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    os.environ["VIRTPLAN_BENCH_N"] = str(n)
    os.environ["VIRTPLAN_STATE_DIR"] = str(workdir / "state")
    stack_file = workdir / f"bench{n}.py"
    stack_file.write_text(STACK)
    started = time.perf_counter()
    with Engine(load_stack(stack_file, {"bench": uri})) as engine:
        plan, obs = engine.plan()
        engine.apply(plan, obs)
    apply_s = time.perf_counter() - started

    def noop_plan() -> None:
        with Engine(load_stack(stack_file, {"bench": uri})) as engine:
            assert engine.plan()[0].empty

    floor_s = best_of(lambda: floor(uri))
    plan_s = best_of(noop_plan)
    env = {**os.environ, "VIRTPLAN_URI": uri}
    cli = [sys.executable, "-m", "virtplan.cli", "plan", str(stack_file), "--detailed-exitcode"]
    process_s = best_of(lambda: subprocess.run(cli, env=env, check=True, capture_output=True), repeat=3)
    with Engine(load_stack(stack_file, {"bench": uri})) as engine:  # leave the host empty
        plan, obs = engine.plan(destroy=True)
        engine.apply(plan, obs)
    return {"apply": apply_s, "floor": floor_s, "plan": plan_s, "process": process_s}


def main() -> None:
    from virtplan_lab.testbed import PrivateHost

    sizes = [int(a) for a in sys.argv[1:]] or [100, 1000]
    workdir = Path(tempfile.mkdtemp(prefix="vp-bench-", dir="/var/tmp"))
    host = PrivateHost(workdir / "h", "bench", qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps"))
    host.start()
    try:
        rows = {n: measure(n, host.uri, workdir) for n in sizes}
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'N':>6} {'apply (define)':>15} {'floor':>9} {'no-op plan':>11} {'ratio':>6} {'whole process':>14}")
    for n, r in rows.items():
        print(f"{n:>6} {r['apply']:>14.2f}s {r['floor']:>8.3f}s {r['plan']:>10.3f}s "
              f"{r['plan'] / r['floor']:>6.2f} {r['process']:>13.3f}s")  # fmt: skip
    if len(rows) > 1:
        items = list(rows.items())
        (n0, r0), (n1, r1) = items[0], items[-1]
        per = [r["plan"] / n for n, r in rows.items()]
        print(f"plan time per VM: {statistics.mean(per) * 1e3:.3f} ms (N={n0}: {r0['plan'] / n0 * 1e3:.3f} ms, "
              f"N={n1}: {r1['plan'] / n1 * 1e3:.3f} ms)")  # fmt: skip


if __name__ == "__main__":
    main()
