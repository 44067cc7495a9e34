"""A fleet over qemu+ssh: no-op `virtplan plan` of H hosts x 100 VMs against the raw read floor.

Starts a lab (`virtplan_lab.lab`: private hosts that are machines on a network, each with
its own sshd; host keys verified through the lab's known_hosts) of 8 hosts, applies one
stack spanning them (a NAT network on every host, 100 VMs per host: defined, stopped,
no disks), then for H = 1, 2, 4, 8 times, best of a few runs, each as a whole process:

- the floor: a Python process opening one `qemu+ssh://` connection per host, all hosts
  at once (a thread each), and reading every domain as the planner must (listAllDomains,
  one inactive XMLDesc each, fetched over a few concurrent calls);
- `virtplan plan STACK --detailed-exitcode` for the same H hosts (exit 0: no changes),
  which also reads networks, pools, its records on each host and the hosts' capabilities.

Floor and plan run in turns, best of a few runs each (the machine may be shared).
Prints the table and the ratio plan/floor per H (goal: at most 1.3 at every H, and nearly
flat in H). Each qemu+ssh connection costs a few hundred milliseconds here (ssh, then
virt-ssh-helper on the host); both sides pay it once per host.

    .venv/bin/python bench/fleet.py [--vms 100] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST_COUNTS = (1, 2, 4, 8)

STACK = """
import os
from virtplan import VM, Host, Network

uris = os.environ["FLEET_URIS"].split()[: int(os.environ["FLEET_HOSTS"])]
hosts = [Host(f"fleet{i}", uri=uri, domain_type="qemu") for i, uri in enumerate(uris, 1)]
net = Network("fleet-net", host=hosts, cidr="10.124.0.0/16")
for host in hosts:
    for i in range(int(os.environ["FLEET_VMS"])):
        VM(f"{host.name}-vm{i:03d}", host=host, memory="64MiB", nics=[net], state="stopped", shutdown_timeout=0)
"""

FLOOR = """
import sys, threading
from concurrent.futures import ThreadPoolExecutor
import libvirt

libvirt.registerErrorHandler(lambda *a: None, None)

def read(uri):
    conn = libvirt.open(uri)
    domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
    with ThreadPoolExecutor(8) as pool:  # a few calls in flight on the one connection, as virtplan does
        xmls = list(pool.map(lambda d: d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), domains))
    conn.close()
    return len(xmls)

uris = sys.argv[1:]
with ThreadPoolExecutor(len(uris)) as pool:
    print(sum(pool.map(read, uris)))
"""


def timed(command: list[str], env: dict[str, str], expect: str) -> float:
    began = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if proc.returncode != 0 or expect not in proc.stdout:
        raise SystemExit(f"{' '.join(command[:4])} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return took


def best_pair(floor: list[str], plan: list[str], env: dict[str, str], runs: int, vms: int) -> tuple[float, float]:
    """The best of `runs` of each, run in turns (floor, plan, floor, ...), so that both see
    the same machine: on a shared machine, load comes and goes."""
    floors, plans = [], []
    for _ in range(runs):
        floors.append(timed(floor, env, str(vms)))
        plans.append(timed(plan, env, "No changes."))
    return min(floors), min(plans)


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--vms", type=int, default=100, help="VMs per host")
    args.add_argument("--runs", type=int, default=7, help="runs per figure, in turns (the best is kept)")
    opts = args.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vp-fleet-", dir="/var/tmp"))
    stack_file = work / "fleetbench.py"
    stack_file.write_text(STACK)
    try:
        rows = measure(stack_file, work, opts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nno-op plan over qemu+ssh, {opts.vms} VMs per host, best of {opts.runs} (whole processes)")
    print(f"{'hosts':>5} {'VMs':>5} {'floor':>8} {'virtplan plan':>14} {'ratio':>6}")
    for count, floor, plan_s in rows:
        print(f"{count:>5} {count * opts.vms:>5} {floor:>7.2f}s {plan_s:>13.2f}s {plan_s / floor:>6.2f}")
    flat = rows[-1][2] / rows[0][2]
    print(f"virtplan plan at {rows[-1][0]} hosts / at {rows[0][0]} host: {flat:.2f}x")


def measure(stack_file: Path, work: Path, opts: argparse.Namespace) -> list[tuple[int, float, float]]:
    from virtplan.engine import Engine
    from virtplan.model import load_stack
    from virtplan_lab.lab import Lab

    with Lab(qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps")) as lab:
        began = time.perf_counter()
        hosts = lab.start_hosts(max(HOST_COUNTS), ssh=True, prefix="fleet")
        print(f"{len(hosts)} lab hosts with sshd started in {time.perf_counter() - began:.1f} s")
        uris = [h.ssh_uri for h in hosts]
        env = lab.env({**os.environ, "FLEET_URIS": " ".join(uris), "FLEET_VMS": str(opts.vms),
                       "VIRTPLAN_STATE_DIR": str(work / "state"), "NO_COLOR": "1"})  # fmt: skip
        os.environ.update(env)
        os.environ["FLEET_HOSTS"] = str(len(hosts))
        began = time.perf_counter()
        with Engine(load_stack(stack_file)) as engine:
            plan, observation = engine.plan()
            report = engine.apply(plan, observation)
        print(f"applied {len(plan.changes)} changes ({len(hosts)} networks, {len(hosts) * opts.vms} VMs defined) "
              f"in {time.perf_counter() - began:.1f} s, at most {report.most_in_flight} at once")  # fmt: skip
        rows = []
        for count in HOST_COUNTS:
            run_env = {**env, "FLEET_HOSTS": str(count)}
            cli = [sys.executable, "-m", "virtplan.cli", "plan", str(stack_file), "--detailed-exitcode"]
            floor_cmd = [sys.executable, "-c", FLOOR, *uris[:count]]
            floor, plan_s = best_pair(floor_cmd, cli, run_env, opts.runs, count * opts.vms)
            rows.append((count, floor, plan_s))
        with Engine(load_stack(stack_file)) as engine:  # leave the hosts empty
            plan, observation = engine.plan(destroy=True)
            engine.apply(plan, observation)
    return rows


if __name__ == "__main__":
    main()
