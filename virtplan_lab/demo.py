"""The demo: apply stacks/demo.py to a local libvirt, re-plan, and show what runs.

Where the demo runs, in order of preference:
1. the host named by VIRTPLAN_URI;
2. the machine's own libvirt (qemu:///system) when a daemon answers there (unless
   VIRTPLAN_DEMO_PRIVATE=1);
3. a private libvirtd started for the demo (the same machinery as the tests), kept
   running in /var/tmp/virtplan-demo so the commands it prints keep working;
4. where no daemon can be started (not root, libvirt missing), libvirt's in-process
   test driver, with the reason said up front.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEMO_DIR = Path(os.environ.get("VIRTPLAN_DEMO_DIR", "/var/tmp/virtplan-demo"))
STACK = Path(__file__).resolve().parent.parent / "stacks" / "demo.py"
IN_PROCESS = "test:///default"


def choose_host() -> tuple[str, str]:
    """The URI to run the demo against and a sentence saying why that one."""
    from virtplan_lab.testbed import PrivateHost, daemon_reachable, missing_prereqs

    if os.environ.get("VIRTPLAN_URI"):
        return os.environ["VIRTPLAN_URI"], "the host named by VIRTPLAN_URI"
    if os.environ.get("VIRTPLAN_DEMO_PRIVATE") != "1" and daemon_reachable("qemu:///system", timeout=3):
        return "qemu:///system", "the machine's own libvirt daemon"
    host = PrivateHost(DEMO_DIR, "demo", qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps"))
    if daemon_reachable(host.uri, timeout=3):
        return host.uri, f"the private demo libvirtd already running in {DEMO_DIR}"
    problems = missing_prereqs()
    if problems:
        return IN_PROCESS, f"libvirt's in-process test driver, since no daemon can start here: {'; '.join(problems)}"
    host.start()
    return host.uri, f"a private libvirtd started for the demo in {DEMO_DIR} (isolated from this machine's libvirt)"


def run(argv: list[str]) -> int:
    """One CLI command in this process; returns its exit code."""
    from virtplan.cli.app import app

    print(f"\n$ virtplan {' '.join(argv)}", flush=True)
    try:
        rc = app(argv, standalone_mode=False)
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return rc if isinstance(rc, int) else 0


def stop() -> int:
    """Stop the private demo libvirtd (its guests go with it; its definitions stay on disk)."""
    from virtplan_lab.testbed import stop_detached

    stopped = stop_detached(DEMO_DIR)
    print(f"stopped the private demo libvirtd in {DEMO_DIR}" if stopped else "no private demo libvirtd is running")
    return 0


def wait_for_guests(uri: str, timeout: float = 90) -> bool:
    """Wait until every running demo VM has reported from inside (its GUEST console line)."""
    import time

    from virtplan.engine import Engine
    from virtplan.model import load_stack

    print("\nwaiting for the guests to report from inside ...", flush=True)
    deadline = time.monotonic() + timeout
    with Engine(load_stack(STACK, {"local": uri})) as engine:
        pending = {vm.name for vm in engine.stack.vms if vm.state == "running"}
        reported: set[str] = set()
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                report = engine.guest_report("local", name)
                if report:
                    print(f"  {name}: ip={report.get('ip')} hostname={report.get('hostname')} "
                          f"instance-id={report.get('instance-id')} says {report.get('value')!r}")  # fmt: skip
                    pending.discard(name)
                    reported.add(str(report.get("ip")))
            time.sleep(0.5)
        # dnsmasq hands the lease to libvirt a moment after the guest has it: wait for those
        # too (briefly), so that `show` below can confirm each address
        from virtplan.hosts.observe import dhcp_leases

        networks = [n.name for n in engine.stack.networks]
        settle = time.monotonic() + 15
        while not pending and time.monotonic() < settle:
            if reported <= set(dhcp_leases(engine.connection("local"), networks).values()):
                break
            time.sleep(0.5)
    if pending:
        print(f"error: no report from {', '.join(sorted(pending))} within {timeout:.0f} s; "
              "see `virtplan console-log stacks/demo.py VM`", file=sys.stderr)  # fmt: skip
        return False
    return True


def main() -> int:
    if sys.argv[1:] == ["--stop"]:
        return stop()
    uri, why = choose_host()
    print(f"virtplan demo on {why}:\n  {uri}")
    keep = None
    if uri == IN_PROCESS:
        import libvirt

        keep = libvirt.open(IN_PROCESS)  # the test driver's state lives while a connection is open
        os.environ["VIRTPLAN_DEMO_GUESTS"] = "none"
        print("The test driver cannot upload images or boot guests: the demo VMs are declared without one.")
    host = ["--host", f"local={uri}"]
    stack = str(STACK.relative_to(Path.cwd())) if STACK.is_relative_to(Path.cwd()) else str(STACK)
    # --allow-destroy: the demo converges its own stack, whose only destructive change is
    # uploading its boot images again once the probe guest was rebuilt (new Debian packages).
    for argv in (["apply", stack, "--yes", "--allow-destroy", *host], ["plan", stack, *host]):
        rc = run(argv)
        if rc != 0:
            return rc
    if uri != IN_PROCESS and not wait_for_guests(uri):
        return 1
    rc = run(["show", stack, *host])
    if rc != 0:
        return rc
    if keep is None:
        print(f"\nTry it yourself:\n  export VIRTPLAN_URI='{uri}'\n  .venv/bin/virtplan plan {stack}")
        print(f"  .venv/bin/virtplan destroy {stack}")
        if uri.startswith("qemu+unix") and str(DEMO_DIR) in uri:
            print("  .venv/bin/python -m virtplan_lab.demo --stop   # stop the private demo libvirtd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
