"""Reaching guests as kcli users do: `show` with reserved addresses, `console-log` (empty,
followed), `virtplan ssh` (the exact ssh command, and a real sshd), `virtplan console` (a
real pty attached to a running probe guest's serial console).

One private host, one NAT network, two running VMs with reserved addresses: `live` boots
the probe guest (a lease, a console with a shell on it); `idle` has a blank disk and no OS
(no lease, nothing on its console).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from virtplan_lab.credentials import ssh_keypair

LIVE_IP, IDLE_IP = "10.83.0.10", "10.83.0.11"
STACK = """
from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
net = Network("acc-net", cidr="10.83.0.0/24")
pool = Pool("acc-pool", path="/var/lib/libvirt/images/acc")
boot = Pool("acc-boot", path="/var/lib/libvirt/images/acc-boot")
ci = CloudInit(user="root", ssh_keys=[{key!r}])
VM("live", memory="128MiB", disks=[Volume("live.qcow2", pool=pool, size="64MiB")], nics=[NIC(net, ip="{live}")],
   kernel=Volume("vmlinuz", pool=boot, source={kernel!r}, format="raw"),
   initrd=Volume("initrd.img", pool=boot, source={initrd!r}, format="raw"), cmdline={cmdline!r},
   cloud_init=ci, shutdown_timeout=0)
VM("idle", memory="64MiB", disks=[Volume("idle.qcow2", pool=pool, size="16MiB")], nics=[NIC(net, ip="{idle}")],
   cloud_init=ci, shutdown_timeout=0)
"""


def run(env, *args: str, rc: int = 0, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "virtplan.cli", *args], env=env.vars, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    assert "Traceback" not in out, out
    return proc


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def env(private_host, probe_image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access")
    home = tmp / "home"
    public = ssh_keypair(home / ".ssh" / "id_ed25519", "tester")
    stack = tmp / "access.py"
    stack.write_text(STACK.format(key=public, live=LIVE_IP, idle=IDLE_IP, kernel=str(probe_image.kernel),
                                  initrd=str(probe_image.initrd), cmdline=probe_image.cmdline))  # fmt: skip
    cache = tmp / "cache"
    e = SimpleNamespace(
        stack=str(stack), tmp=tmp, home=home, public=public, cache=cache, host=private_host,
        vars={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "HOME": str(home), "VIRTPLAN_CACHE_DIR": str(cache),
              "VIRTPLAN_URI": private_host.uri},
    )  # fmt: skip
    run(e, "apply", e.stack, "--yes")
    wait_for(lambda: "GUEST ip=" in run(e, "console-log", e.stack, "live").stdout, what="the live guest's report")
    time.sleep(1)  # the guest's console shell starts just after its report
    assert run(e, "console-log", e.stack, "live", "--tail", "1").stdout.startswith("GUEST ip="), "the last line"
    e.conn = private_host.connect()
    yield e
    e.conn.close()


def test_show_marks_reserved_addresses_without_a_lease(env):
    out = run(env, "show", env.stack).stdout
    live = next(line for line in out.splitlines() if " live " in line)
    idle = next(line for line in out.splitlines() if " idle " in line)
    assert f"{LIVE_IP} (guest confirms)" in live
    assert f"{IDLE_IP} (reserved; no lease yet)" in idle, out
    rows = __import__("json").loads(run(env, "show", env.stack, "--format", "json").stdout)
    idle_row = next(r for r in rows if r["name"] == "idle")
    assert idle_row["nics"][0]["ip"] is None and idle_row["nics"][0]["reserved"] == IDLE_IP


def test_empty_console_log_says_so_on_stderr(env):
    proc = run(env, "console-log", env.stack, "idle")
    assert proc.stdout == ""
    assert "note: the console log of h/vm/idle is empty" in proc.stderr


# -- ssh ------------------------------------------------------------------------------------
@pytest.fixture
def fake_ssh(env, tmp_path):
    """An `ssh` first on PATH that records its arguments and exits 7."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "argv"
    (bin_dir / "ssh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nexit 7\n')
    (bin_dir / "ssh").chmod(0o755)
    vars_ = {**env.vars, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return SimpleNamespace(vars=vars_), record


def test_ssh_runs_ssh_with_the_address_user_key_and_a_known_hosts_file_per_vm(env, fake_ssh):
    fake, record = fake_ssh
    proc = run(fake, "ssh", env.stack, "idle", "--", "uname", "-a", rc=7)  # ssh's exit code is virtplan's
    uuid = env.conn.lookupByName("idle").UUIDString()
    known = env.cache / "ssh" / f"{uuid}.known_hosts"
    assert record.read_text().splitlines() == [
        "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=accept-new",
        "-i", str(env.home / ".ssh" / "id_ed25519"), f"root@{IDLE_IP}", "--", "uname", "-a",
    ]  # fmt: skip
    assert f"ssh root@{IDLE_IP} (the VM's reserved address)" in proc.stderr
    run(fake, "ssh", env.stack, "live", rc=7)
    assert f"root@{LIVE_IP}" in record.read_text().splitlines()
    out = run(fake, "ssh", env.stack, "live", "--dry-run", "--user", "ops", "-i", "/k").stdout
    assert out.strip().endswith(f"-i /k ops@{LIVE_IP}")
    assert "declares no VM 'nope'" in run(fake, "ssh", env.stack, "nope", rc=1).stderr


def test_ssh_logs_into_a_real_sshd_at_the_guest_address(env, tmp_path):
    """A real OpenSSH sshd answers at idle's reserved address inside the host's network
    namespace (the probe guest has no sshd of its own); virtplan ssh runs there too."""
    pid = str(env.host.pid)
    sshd_dir = tmp_path / "sshd"
    ssh_keypair(sshd_dir / "host_key", "sshd")
    (sshd_dir / "authorized_keys").write_text(env.public + "\n")
    config = sshd_dir / "sshd_config"
    config.write_text(
        f"ListenAddress {IDLE_IP}\nPort 22\nHostKey {sshd_dir / 'host_key'}\nPidFile {sshd_dir / 'pid'}\n"
        f"AuthorizedKeysFile {sshd_dir / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
    )
    subprocess.run(["nsenter", "-t", pid, "-n", "ip", "addr", "add", f"{IDLE_IP}/32", "dev", "lo"], check=True)
    sshd = subprocess.Popen(
        ["nsenter", "-t", pid, "-m", "-n", "sh", "-c", f"mkdir -p -m 0755 /run/sshd && exec /usr/sbin/sshd -D -e -f {config}"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        inside = ("nsenter", "-t", pid, "-n")
        wait_for(lambda: run(env, "ssh", env.stack, "idle", "--", "true", prefix=inside, rc=None_ok()).returncode == 0,
                 timeout=30, what="sshd")  # fmt: skip
        out = run(env, "ssh", env.stack, "idle", "--", "echo", "hello-from-$((6*7))", prefix=inside).stdout
        assert out.strip() == "hello-from-42"
        uuid = env.conn.lookupByName("idle").UUIDString()
        known = env.cache / "ssh" / f"{uuid}.known_hosts"  # trusted on first use, for this VM only
        found = subprocess.run(["ssh-keygen", "-F", IDLE_IP, "-f", str(known)], capture_output=True, text=True)
        assert (sshd_dir / "host_key.pub").read_text().split()[1] in found.stdout
    finally:
        sshd.send_signal(signal.SIGTERM)
        sshd.wait(timeout=10)
        subprocess.run(["nsenter", "-t", pid, "-n", "ip", "addr", "del", f"{IDLE_IP}/32", "dev", "lo"], check=False)


class None_ok(int):
    """An expected exit code that matches any (for polling)."""

    def __new__(cls) -> None_ok:
        return super().__new__(cls, 0)

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = int.__hash__


# -- console ----------------------------------------------------------------------------------
class Terminal:
    """A process on a real pty; reads what it prints."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.leader, follower = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=follower, stdout=follower, stderr=follower, env=env)
        os.close(follower)
        self.output = b""

    def expect(self, pattern: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if re.search(pattern, text):
                return text
            ready, _, _ = select.select([self.leader], [], [], 0.2)
            if ready:
                try:
                    self.output += os.read(self.leader, 4096)
                except OSError:
                    break
        raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text()}")

    def type(self, data: bytes) -> None:
        os.write(self.leader, data)

    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            os.close(self.leader)


def test_console_attaches_a_terminal_to_the_guest_and_follow_sees_it(env):
    follow = subprocess.Popen(
        [sys.executable, "-m", "virtplan.cli", "console-log", env.stack, "live", "--follow", "--interval", "0.3"],
        env={**env.vars, "PYTHONFAULTHANDLER": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )  # fmt: skip  (faulthandler: a follow that does not end is made to show where it is, below)
    term = Terminal([sys.executable, "-m", "virtplan.cli", "console", env.stack, "live"], env.vars)
    try:
        term.expect("Ctrl-] leaves")
        term.type(b"echo console-$((6*7))\r")  # Enter, as a terminal sends it
        term.expect(r"\nconsole-42")  # computed by the guest: a round trip, not an echo
        term.type(b"\x1d")  # Ctrl-]
        term.expect("Left the console of h/vm/live")
        assert term.close() == 0
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
    # what the guest wrote on its console reached the log, and --follow printed it
    seen = ""
    deadline = time.monotonic() + 30
    while "console-42" not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([follow.stdout], [], [], 0.5)
        if ready:
            seen += os.read(follow.stdout.fileno(), 65536).decode(errors="replace")
    assert "GUEST ip=" in seen and "console-42" in seen, seen
    # a restarted VM's log starts afresh: following goes on from its beginning
    dom = env.conn.lookupByName("live")
    dom.destroy()
    dom.create()
    deadline = time.monotonic() + 120
    after = ""
    while "GUEST ip=" not in after and time.monotonic() < deadline:
        ready, _, _ = select.select([follow.stdout], [], [], 0.5)
        if ready:
            after += os.read(follow.stdout.fileno(), 65536).decode(errors="replace")
    assert "GUEST ip=" in after, after
    follow.send_signal(signal.SIGINT)
    try:
        follow.wait(timeout=30)
    except subprocess.TimeoutExpired:
        masks = _signal_masks(follow.pid) + "; this test's process: " + _signal_masks(os.getpid())
        follow.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        follow.wait(timeout=10)
        raise AssertionError(f"Ctrl-C did not end following ({masks}); where it was:\n{follow.stderr.read()}") from None
    assert follow.returncode == 0, "Ctrl-C ends following; it is not an error"
    assert "restarted; its console log starts afresh" in follow.stderr.read()


def _as_in_a_terminal() -> None:
    """Ctrl-C as an interactive shell delivers it: a test run started in the background by a
    non-interactive shell ignores SIGINT (and SIGQUIT), a process started from it inherits
    that, and Python then installs no KeyboardInterrupt at all."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _signal_masks(pid: int) -> str:
    """Which signals the process blocks, ignores, catches and has pending (from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        return " ".join(
            line.strip() for line in f if line.startswith(("SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"))
        )


def test_console_refuses_a_stopped_vm(env):
    env.conn.lookupByName("idle").destroy()
    try:
        out = run(env, "console", env.stack, "idle", rc=1).stderr
        assert "VM 'idle' is not running" in out
        assert "h/vm/idle is not running" in run(env, "ssh", env.stack, "idle", rc=1).stderr
    finally:
        env.conn.lookupByName("idle").create()


def test_jump_host_for_ssh_transports():
    from virtplan.workflows.guest import jump_host

    assert jump_host("qemu+ssh://root@kvm1/system") == "root@kvm1"
    assert jump_host("qemu+ssh://kvm1:2222/system?keyfile=/k") == "kvm1:2222"
    assert jump_host("qemu+libssh2://ops@10.0.0.5/system") == "ops@10.0.0.5"
    assert jump_host("qemu:///system") is None and jump_host("qemu+tls://kvm1/system") is None
    assert jump_host("qemu+unix:///system?socket=/s") is None


def test_real_key_is_found_beside_its_public_half(tmp_path):
    from virtplan.workflows.guest import matching_private_key

    one = ssh_keypair(tmp_path / "one", "one")
    two = ssh_keypair(tmp_path / "two", "two")
    assert matching_private_key([two], tmp_path) == tmp_path / "two"
    assert matching_private_key([one.replace(" one", " renamed")], tmp_path) == tmp_path / "one"
    assert matching_private_key(["ssh-ed25519 AAAAnotthere x"], tmp_path) is None
    assert Path(tmp_path / "one").is_file()
