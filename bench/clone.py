"""Cloning an environment of 10 VMs whose disks hold 1 GiB of written data each.

On a private libvirt host (real libvirtd + QEMU), in one run and on the same VMs:
- `virtplan clone` with linked clones (the default): frozen source disks, qcow2 overlays;
- `virtplan clone --full`: full copies, made by libvirt on the host;
- `virt-clone --auto-clone` (Debian's virtinst) for each VM, one after the other;
and, to show that a linked clone does not depend on the data, a linked clone of an
identical environment whose disks hold nothing. Every clone is defined, not started (the
source VMs are stopped, as virt-clone requires). Before each measurement the source disks
are written back and dropped from the page cache (only those files), so copies read them
from disk as they would on a host that did not just write them. Prints the figures and
the ratios (target: linked well under 10 s, at least 20x faster than --full).

    .venv/bin/python bench/clone.py [--vms 10] [--gib 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

STACK = """
from virtplan import VM, Host, Network, Pool, Volume
Host("bench", uri="qemu:///system", domain_type="qemu")
net = Network("{name}-net", cidr="{subnet}")
pool = Pool("{name}-pool", path="/var/lib/libvirt/images/{name}")
for i in range({vms}):
    VM(f"{name}-{{i:02d}}", memory="64MiB", disks=[Volume(f"{name}-{{i:02d}}.qcow2", pool=pool, size="{size}GiB")],
       nics=[net], state="stopped", shutdown_timeout=0)
"""


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=10)
    parser.add_argument("--gib", type=int, default=1, help="GiB of data written into each disk")
    args = parser.parse_args()

    from virtplan.engine import Engine
    from virtplan.model import load_stack
    from virtplan.testing import destroy
    from virtplan.workflows.clone import CloneOptions, clone
    from virtplan_lab.testbed import PrivateHost

    workdir = Path(tempfile.mkdtemp(prefix="vp-bc-", dir="/var/tmp"))
    host = PrivateHost(workdir, "bench", qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps"))
    host.start()
    tmp = Path(tempfile.mkdtemp(prefix="virtplan-bench-clone-"))
    uris = {"bench": host.uri}
    try:
        envs = {"data": "10.124.0.0/24", "empty": "10.125.0.0/24"}
        stacks = {}
        for name, subnet in envs.items():
            stacks[name] = tmp / f"{name}.py"
            stacks[name].write_text(STACK.format(name=name, subnet=subnet, vms=args.vms, size=args.gib + 1))
            with Engine(load_stack(stacks[name], uris)) as engine:
                plan, observation = engine.plan()
                engine.apply(plan, observation)
        print(f"writing {args.gib} GiB into each of {args.vms} disks ...", flush=True)

        def fill(i: int) -> None:
            path = f"/var/lib/libvirt/images/data/data-{i:02d}.qcow2"
            subprocess.run(["nsenter", "-t", str(host.pid), "-m", "qemu-io", "-c",
                            f"write -P 0xcd 0 {args.gib}G", path], check=True, capture_output=True)  # fmt: skip

        seconds = timed(lambda: list(ThreadPoolExecutor(2).map(fill, range(args.vms))))
        print(f"  written in {seconds:.1f} s")
        results: dict[str, float] = {}

        def cold() -> None:
            """Write the source images back and drop them (and only them) from the page cache."""
            folder = Path(f"/proc/{host.pid}/root/var/lib/libvirt/images/data")
            for image in folder.iterdir():
                fd = os.open(image, os.O_RDONLY)
                try:
                    os.fsync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)

        # virt-clone first: it copies the disks exactly as they are now (no virtplan layers yet)
        virt_clone = shutil.which("virt-clone")
        if virt_clone:

            def run_virt_clone() -> None:
                for i in range(args.vms):
                    subprocess.run([virt_clone, "--connect", host.uri, "--original", f"data-{i:02d}",
                                    "--name", f"vc-{i:02d}", "--auto-clone", "--quiet"], check=True)  # fmt: skip

            cold()
            results["virt-clone"] = timed(run_virt_clone)
            for i in range(args.vms):
                subprocess.run(["virsh", "-q", "-c", host.uri, "undefine", f"vc-{i:02d}", "--remove-all-storage"],
                               check=True, capture_output=True)  # fmt: skip
        else:
            print("  virt-clone not found (apt-get install virtinst); skipped")

        def virtplan_clone(name: str, source: str, full: bool) -> None:
            clone(stacks[source], CloneOptions(name, full=full, out=tmp / f"{name}.py"), uris)

        cold()
        results["virtplan clone --full"] = timed(lambda: virtplan_clone("full", "data", True))
        destroy(tmp / "full.py")
        cold()
        results["virtplan clone (linked)"] = timed(lambda: virtplan_clone("linked", "data", False))
        destroy(tmp / "linked.py")
        results["virtplan clone (linked, empty disks)"] = timed(lambda: virtplan_clone("linked0", "empty", False))
        destroy(tmp / "linked0.py")

        print(f"\nCloning {args.vms} VMs with {args.gib} GiB written on each disk (defined, not started):")
        for label, value in results.items():
            print(f"  {label:<38} {value:8.2f} s")
        linked = results["virtplan clone (linked)"]
        print(f"  --full / linked                        {results['virtplan clone --full'] / linked:8.1f}x")
        if "virt-clone" in results:
            print(f"  virt-clone / linked                    {results['virt-clone'] / linked:8.1f}x")
        empty = results["virtplan clone (linked, empty disks)"]
        print(f"  linked with {args.gib} GiB / linked with none     {linked / empty:8.2f}x")
        return 0
    finally:
        host.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
