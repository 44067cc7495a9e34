"""An apply that never lies (issue 11), through the CLI against a real private host.

- libvirt's and QEMU's text is printed exactly as they wrote it, square brackets and all,
  and an apply that failed never says it completed;
- after the first failure nothing new starts (also with one worker), and the report
  lists what was done, what failed and what did not start;
- stopping a running VM is destructive and guarded;
- Ctrl-C: in-flight changes finish and are recorded, nothing new starts, exit 130; a
  second Ctrl-C abandons the in-flight ones, saying which may be half-done;
- usage errors exit 1, never 2 (`--detailed-exitcode`'s "changes present");
- deleting a VM together with its disks does not wait for a guest that will never shut
  down; every wait says what it waits for;
- a libvirtd restart mid-apply is one line naming the host, its URI and what was in flight.

The guests are blank (no OS: SeaBIOS finds nothing to boot), so they never answer an
ACPI power-button press: every graceful stop waits for its full timeout.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import libvirt
import pytest
from review_support import Cli

from virtplan.engine import Engine
from virtplan.errors import ApplyError
from virtplan.model import load_stack

#: A pool folder whose name is rich markup and a bracketed index: every message that
#: names a disk in it must print it exactly.
MARKUP_DIR = "/var/lib/libvirt/images/hon[1][x][/bold]"


def header(workers: int = 4) -> str:
    return (
        "from virtplan import VM, Host, Pool, Volume\n"
        f'Host("h", uri="qemu:///system", domain_type="qemu", workers={workers})\n'
    )


def lines_of(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip().startswith(word)]


# -- a failure: reported exactly, and nothing new starts after it ---------------------------
FAILING = (
    header(workers=1)
    + f'pool = Pool("hon-pool", path="{MARKUP_DIR}")\n'
    + "".join(f'd{i} = Volume("d{i}.qcow2", pool=pool, size="16MiB")\n' for i in range(7))
)
VMS = "".join(f'VM("f{i}", memory="64MiB", disks=[d{i}], shutdown_timeout=0)\n' for i in range(7))
INTRUDER = """<domain type='qemu'><name>intruder</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='{path}'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


@pytest.fixture(scope="module")
def failed_apply(cli, conn, home) -> tuple[subprocess.CompletedProcess[str], str]:
    """The pool and volumes applied; a VM this stack does not manage runs on d0 (QEMU
    holds its write lock); then the stack's VMs f0..f6 (f0 on d0) applied with one
    worker. f0's start fails with QEMU's "Is another process using the image [...]?"."""
    stack = home / "honest-fail.py"
    stack.write_text(FAILING)
    cli("apply", str(stack), "--yes")
    path = conn.storagePoolLookupByName("hon-pool").storageVolLookupByName("d0.qcow2").path()
    conn.defineXML(INTRUDER.format(path=path)).create()
    stack.write_text(FAILING + VMS)
    return cli.run("apply", str(stack), "--yes"), path


def test_libvirt_text_with_brackets_is_printed_verbatim_and_a_failed_apply_never_completes(failed_apply):
    proc, path = failed_apply
    qemu_says = f"Is another process using the image [{path}]?"
    assert MARKUP_DIR in path
    assert qemu_says in proc.stdout, proc.stdout  # the progress line, as QEMU wrote it
    assert qemu_says in proc.stderr, proc.stderr  # the error, as QEMU wrote it
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [failed] = lines_of(proc.stdout, "failed")
    assert failed.strip().startswith("failed   create h/vm/f0: "), failed
    assert proc.stderr.startswith("error: apply stopped at a failure (0 done, 1 failed, 6 not started)"), proc.stderr
    assert "Apply complete" not in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_nothing_new_starts_after_the_first_failure_even_with_one_worker(failed_apply, conn):
    proc, _ = failed_apply
    assert "not started: " + ", ".join(f"create h/vm/f{i}" for i in range(1, 7)) in proc.stderr, proc.stderr
    assert lines_of(proc.stdout, "done") == []
    started = sorted(d.name() for d in conn.listAllDomains() if re.fullmatch(r"f\d", d.name()))
    assert started == ["f0"], f"changes started after the first failure: {started}"


def test_a_progress_printer_that_breaks_never_turns_a_failure_into_success(failed_apply, private_host, home):
    """The bug behind "Apply complete after a failure": the progress callback raised (rich
    read QEMU's "[/path]" as a closing tag) in the scheduler and its outcomes were lost."""
    from rich.console import Console

    def progress(event: str, change: Any, error: str | None) -> None:
        Console(file=io.StringIO()).print(f"[red]failed[/red] {error}" if error else event)

    with Engine(load_stack(home / "honest-fail.py", {"h": private_host.uri})) as engine:
        plan, observation = engine.plan()
        with pytest.raises(ApplyError) as info:
            engine.apply(plan, observation, progress)
    report = info.value.report
    assert [o.address for o in report.by_status("failed")] == ["h/vm/f0"]


# -- stopping a running VM is destructive -----------------------------------------------------
def test_stopping_a_running_vm_is_destructive_and_needs_allow_destroy(cli, conn, home):
    stack = home / "honest-stop.py"
    stack.write_text(header() + 'VM("s1", memory="64MiB", shutdown_timeout=0)\n')
    cli("apply", str(stack), "--yes")
    stack.write_text(header() + 'VM("s1", memory="64MiB", shutdown_timeout=0, state="stopped")\n')
    plan = cli("plan", str(stack))
    assert "! destructive: the running VM is stopped" in plan, plan
    refused = cli("apply", str(stack), "--yes", rc=1)
    assert "destructive" in refused and "--allow-destroy" in refused, refused
    assert conn.lookupByName("s1").isActive(), "apply --yes stopped a running VM without --allow-destroy"
    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert not conn.lookupByName("s1").isActive()
    cli("destroy", str(stack), "--yes", "--allow-destroy")


# -- Ctrl-C -----------------------------------------------------------------------------------
def slow_stack(name: str, stopped: bool, more: int = 4) -> str:
    """Two running blank VMs with an 8 s shutdown timeout; `stopped` declares them stopped
    (each stop waits the full 8 s) and `more` new VMs after them. Two workers: the two stops
    are in flight while the new VMs wait."""
    state = ', state="stopped"' if stopped else ""
    body = header(workers=2)
    body += "".join(f'VM("{name}-{c}", memory="64MiB", shutdown_timeout=8{state})\n' for c in "ab")
    if stopped:
        body += "".join(f'VM("{name}-n{i}", memory="64MiB", shutdown_timeout=0)\n' for i in range(more))
    return body


def start_slow_apply(cli: Cli, stack: Path, name: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Apply the slow stack and return once both stops are in flight (1.5 s into their 8 s),
    with the process and the lines it printed so far."""
    stack.write_text(slow_stack(name, stopped=False))
    cli("apply", str(stack), "--yes")
    stack.write_text(slow_stack(name, stopped=True))
    proc = cli.spawn("apply", str(stack), "--yes", "--allow-destroy")
    assert proc.stdout is not None
    seen: list[str] = []
    while not any(line.startswith("Plan:") for line in seen):
        line = proc.stdout.readline()
        assert line, "apply ended before it applied anything:\n" + "".join(seen)
        seen.append(line)
    time.sleep(1.5)
    return proc, seen


def test_ctrl_c_finishes_in_flight_changes_starts_nothing_new_reports_and_exits_130(cli, conn, home):
    stack = home / "honest-int.py"
    proc, seen = start_slow_apply(cli, stack, "int")
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert "Interrupt received: finishing 2 in-flight changes, not starting 4" in out, out
    assert "done     update h/vm/int-a" in out and "done     update h/vm/int-b" in out, out
    assert "not started: " + ", ".join(f"create h/vm/int-n{i}" for i in range(4)) in out, out
    assert "Traceback" not in out and "Apply complete" not in out
    assert not conn.lookupByName("int-a").isActive() and not conn.lookupByName("int-b").isActive()
    assert not [d.name() for d in conn.listAllDomains() if d.name().startswith("int-n")]
    drift = cli("drift", str(stack), "--detailed-exitcode")  # the stops were recorded as virtplan's
    assert "No changes outside virtplan" in drift, drift
    cli("apply", str(stack), "--yes", "--allow-destroy")
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_second_ctrl_c_abandons_in_flight_changes_cleanly_and_the_rerun_converges(cli, conn, home):
    stack = home / "honest-int2.py"
    proc, seen = start_slow_apply(cli, stack, "int2")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 130, out
    assert time.monotonic() - started < 5, "the second Ctrl-C must not wait for the changes in flight"
    assert re.search(
        r"Second interrupt: abandoned 2 change\(s\) in flight, which may be half-done: "
        r"update h/vm/int2-[ab], update h/vm/int2-[ab]\.",
        out,
    ), out
    assert "Traceback" not in out and "threading" not in out, out
    cli("apply", str(stack), "--yes", "--allow-destroy")
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    cli("destroy", str(stack), "--yes", "--allow-destroy")


# -- usage errors -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ("plan", "{stack}", "--detailed-exitcode", "--bogus"),
        ("apply", "{stack}", "--lock-timeout", "soon"),
        ("destroy", "{stack}", "--yse"),
        ("drift", "{stack}", "--detailed-exitcode", "--format"),
        ("snapshot", "create", "{stack}"),
        ("no-such-command",),
        (),
    ],
)
def test_usage_errors_exit_1_never_the_changes_present_code(cli, home, args):
    stack = home / "honest-usage.py"
    stack.write_text(header() + 'VM("u1", memory="64MiB")\n')
    proc = cli.run(*(a.format(stack=stack) for a in args))
    assert proc.returncode == 1, f"virtplan {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr


# -- waits ------------------------------------------------------------------------------------
def test_destroy_does_not_wait_for_guests_whose_disks_go_with_them(cli, conn, home):
    stack = home / "honest-fast.py"
    body = header() + 'pool = Pool("fast-pool", path="/var/lib/libvirt/images/honest-fast")\n'
    body += "".join(
        f'VM("w{i}", memory="64MiB", disks=[Volume("w{i}.qcow2", pool=pool, size="16MiB")])\n' for i in range(3)
    )  # the default 60 s shutdown timeout; the guests never answer
    stack.write_text(body)
    cli("apply", str(stack), "--yes")
    started = time.monotonic()
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")
    elapsed = time.monotonic() - started
    assert elapsed < 30, f"destroy took {elapsed:.0f} s: it waited for guests whose disks it deletes\n{out}"
    assert not lines_of(out, "waiting"), out
    assert not [d for d in conn.listAllDomains() if re.fullmatch(r"w\d", d.name())]


def test_every_wait_says_what_it_waits_for_also_without_a_terminal(cli, conn, home):
    stack = home / "honest-wait.py"
    stack.write_text(header() + 'VM("slow", memory="64MiB", shutdown_timeout=3)\n')
    cli("apply", str(stack), "--yes")
    stack.write_text(header() + 'VM("slow", memory="64MiB", shutdown_timeout=3, state="stopped")\n')
    out = cli("apply", str(stack), "--yes", "--allow-destroy")  # stdout is a pipe, not a terminal
    assert (
        "waiting  update h/vm/slow: waiting up to 3 s for vm slow to shut down (ACPI power button), then forcing it off"
    ) in out, out
    cli("destroy", str(stack), "--yes", "--allow-destroy")


def test_a_vm_that_asks_for_it_is_shut_down_gracefully_before_its_deletion(cli, conn, home):
    stack = home / "honest-polite.py"
    body = header() + 'pool = Pool("polite-pool", path="/var/lib/libvirt/images/honest-polite")\n'
    body += 'VM("polite", memory="64MiB", disks=[Volume("polite.qcow2", pool=pool, size="16MiB")], '
    body += "shutdown_timeout=2, shutdown_on_delete=True)\n"
    stack.write_text(body)
    cli("apply", str(stack), "--yes")
    out = cli("destroy", str(stack), "--yes", "--allow-destroy")
    assert "waiting  delete h/vm/polite: waiting up to 2 s for vm polite to shut down" in out, out


# -- a lost connection ------------------------------------------------------------------------
def test_a_libvirtd_restart_mid_apply_is_one_line_naming_host_uri_and_in_flight_changes(cli, conn, home, private_host):
    stack = home / "honest-lost.py"
    proc, seen = start_slow_apply(cli, stack, "lost")
    private_host.restart_daemon()
    rest, _ = proc.communicate(timeout=60)
    out = "".join(seen) + rest
    assert proc.returncode == 1, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out
    [line] = errors
    assert f"lost the connection to host 'h' ({private_host.uri})" in line, line
    assert re.search(r"in flight then, and maybe half-done: update h/vm/lost-[ab], update h/vm/lost-[ab]", line), line
    assert "Traceback" not in out, out
    cli("apply", str(stack), "--yes", "--allow-destroy")  # the re-run converges
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    cli("destroy", str(stack), "--yes", "--allow-destroy")


@pytest.fixture(scope="module", autouse=True)
def _clean_intruder(private_host):
    yield
    conn = private_host.connect()  # a new one: a test restarts the daemon
    try:
        dom = conn.lookupByName("intruder")
        dom.destroy()
        dom.undefine()
    except libvirt.libvirtError:
        pass
    finally:
        conn.close()
