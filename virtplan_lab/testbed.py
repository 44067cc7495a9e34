"""Private libvirt hosts for tests: a real ``libvirtd`` + QEMU in their own namespaces.

A :class:`PrivateHost` runs ``virtlogd`` and ``libvirtd`` inside
``unshare --mount --net --propagation private``.  Inside those namespaces:

- ``/etc/libvirt`` is ``<workdir>/etc``, holding only ``libvirtd.conf`` and ``qemu.conf``;
- ``/run`` is a fresh tmpfs (so ``/run/libvirt`` and virtlogd's socket are private);
- ``/sys`` is a fresh sysfs, showing the namespace's network devices only;
- ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt`` are
  directories under ``<workdir>``;
- the network namespace is new: only ``lo``, which is brought up.

Guarantees:

- The machine's own libvirt is never touched: its configuration, definitions,
  state, logs and sockets stay hidden from the private daemon, whose sockets live
  in ``<workdir>/sock`` and whose every write lands in ``<workdir>`` or the
  private tmpfs.  Bridges, firewall rules and dnsmasq exist only in the private
  network namespace, so hosts running at the same time may reuse bridge names
  and subnets.
- :meth:`PrivateHost.stop` leaves no process of the host behind: it kills every
  process in the host's network namespace (libvirtd, virtlogd, dnsmasq, QEMU).

The only changes made to the machine itself are those of
:func:`ensure_system_prereqs`.  Importing this module has no side effects;
``libvirt`` is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

_T = TypeVar("_T")

#: PATH for every command run here: the daemons find dnsmasq, iptables and ip in sbin.
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The longest socket libvirtd creates in ``<workdir>/sock``.
_LONGEST_SOCKET = "sock/libvirt-admin-sock"
#: ``sun_path`` holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
#: Characters allowed in a workdir: it goes into a URI, a shell script and config files.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
#: Private workdir subdirectory -> machine directory it hides inside the namespace.
_STATE_DIRS = {
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}
_REQUIRED_COMMANDS = ("unshare", "mount", "ip", "libvirtd", "virtlogd", "qemu-system-x86_64")
_LOG_TAIL_LINES = 30
#: Domains destroyed at once by stop(): QEMU takes ~1.5 s to die, mostly waiting.
_DESTROY_WORKERS = 16


class HostStartError(RuntimeError):
    """A private host did not come up; the message carries the tail of its logs."""


PID_FILE = "libvirtd.pid"


def ensure_system_prereqs() -> None:
    """Create what libvirtd needs on the machine itself, if missing; idempotent.

    Creates the groups ``kvm`` and ``libvirt-qemu``, the system user
    ``libvirt-qemu`` (groups ``libvirt-qemu`` and ``kvm``; the QEMU driver refuses
    to load without it) and the empty mount points ``/var/lib/libvirt``,
    ``/var/log/libvirt`` and ``/var/cache/libvirt``.  Never changes what exists.
    """
    for group in ("kvm", "libvirt-qemu"):
        _create_unless(functools.partial(_group_exists, group), ["groupadd", "--system", group])
    _create_unless(
        functools.partial(_user_exists, "libvirt-qemu"),
        [
            "useradd",
            "--system",
            "--gid",
            "libvirt-qemu",
            "--groups",
            "kvm",
            "--home-dir",
            "/var/lib/libvirt",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "libvirt-qemu",
        ],
    )
    for mount_point in _STATE_DIRS.values():
        Path(mount_point).mkdir(parents=True, exist_ok=True)


def missing_prereqs() -> list[str]:
    """Why a private host cannot start here (not root, commands missing); empty if it can."""
    problems = [] if os.geteuid() == 0 else ["not running as root"]
    problems += [
        f"command not found: {command}" for command in _REQUIRED_COMMANDS if shutil.which(command, path=_PATH) is None
    ]
    return problems


def daemon_reachable(uri: str, timeout: float = 5.0) -> bool:
    """True if a libvirt connection to ``uri`` opens within ``timeout`` seconds.

    Never raises and never blocks much longer than ``timeout``.  For a URI with a
    ``socket=`` parameter, the socket is probed first, so a dead daemon costs no
    libvirt error message on stderr.  A connection attempt that times out is
    abandoned in a daemon thread.
    """
    socket_path = _socket_param(uri)
    if socket_path is not None and not _socket_accepts(socket_path, timeout):
        return False

    def open_and_close() -> bool:
        import libvirt

        try:
            libvirt.open(uri).close()
        except libvirt.libvirtError:
            return False
        return True

    return _call_with_timeout(open_and_close, timeout) is True


class PrivateHost:
    """A real libvirtd + virtlogd (+ QEMU, dnsmasq) isolated in private namespaces.

    ``workdir`` must be a short absolute path used by this host only: it holds the
    configuration, sockets, state and logs.  The host never deletes it.

    ``qemu_caps_cache``, if given, is a directory shared between hosts that keeps
    libvirt's probed QEMU capabilities: a fresh host then starts its first guest
    in about 0.6 s instead of 4.5 s.  libvirt itself checks each cached entry
    (QEMU binary, libvirt version, kernel) and re-probes a stale one.
    """

    def __init__(self, workdir: Path, name: str = "host", qemu_caps_cache: Path | None = None) -> None:
        self.workdir = Path(workdir).absolute()
        self.name = name
        self.qemu_caps_cache = qemu_caps_cache
        self._check_workdir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._netns_fd: int | None = None

    # -- public interface ---------------------------------------------------------

    @property
    def uri(self) -> str:
        """The libvirt URI of this host's daemon."""
        return f"qemu+unix:///system?socket={self.socket_path}"

    @property
    def socket_path(self) -> Path:
        """libvirtd's read-write socket (inside ``workdir``)."""
        return self.workdir / "sock" / "libvirt-sock"

    @property
    def log_path(self) -> Path:
        """libvirtd's log file (warnings and errors)."""
        return self.workdir / "libvirtd.log"

    @property
    def launch_log_path(self) -> Path:
        """Output of the namespace set-up script and of the daemons before they detach."""
        return self.workdir / "launch.log"

    @property
    def pid(self) -> int | None:
        """libvirtd's pid while it runs, else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while libvirtd runs."""
        return self.pid is not None

    def start(self, timeout: float = 30) -> None:
        """Start the daemons; return once the socket accepts a libvirt connection.

        Raises :class:`HostStartError` (with the tail of the logs) if the daemon
        exits or is not reachable within ``timeout`` seconds; nothing of the host
        is left running then.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} is already started")
        problems = missing_prereqs()
        if problems:
            raise HostStartError(f"{self!r} cannot start: {'; '.join(problems)}")
        ensure_system_prereqs()
        self._write_files()
        self._proc = self._launch()
        try:
            self._wait_until_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10) -> None:
        """Stop the host and every process in its namespaces; idempotent.

        First destroys all running domains through libvirt, then stops libvirtd
        (SIGTERM, SIGKILL after ``timeout`` seconds), then kills whatever is
        left in the host's network namespace (virtlogd, dnsmasq, stray QEMU).
        """
        if self._proc is None:
            return
        try:
            if self.running:
                self._destroy_domains(timeout)
            self._stop_daemon(timeout)
            self._kill_namespace(timeout)
            self._save_qemu_caps()
        finally:
            self._release_namespace()
            self._proc = None

    def connect(self) -> Any:
        """A new read-write ``libvirt.virConnect`` to this host; the caller closes it."""
        import libvirt

        if not self.running:
            raise RuntimeError(f"{self!r} is not running")
        return libvirt.open(self.uri)

    def namespace_pids(self) -> list[int]:
        """Pids of all live processes in this host's network namespace."""
        netns = self._pinned_netns()
        if netns is None:
            return []
        return [pid for pid in _all_pids() if _netns_id(pid) == netns]

    def __enter__(self) -> PrivateHost:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PrivateHost({self.name!r}, workdir={str(self.workdir)!r})"

    # -- starting ---------------------------------------------------------------------

    def _check_workdir(self) -> None:
        """Refuse workdirs that break the socket path limit, quoting, or the namespace."""
        text = str(self.workdir)
        if not _SAFE_PATH.match(text):
            raise ValueError(f"workdir must match [A-Za-z0-9._/-]+: {text!r}")
        if len((self.workdir / _LONGEST_SOCKET).as_posix().encode()) > _MAX_SOCKET_PATH:
            raise ValueError(f"workdir too long for unix socket paths: {text!r}")
        hidden = ("/run", "/var/run", "/etc/libvirt", *_STATE_DIRS.values())
        if any(self.workdir.is_relative_to(path) for path in hidden):
            raise ValueError(f"workdir is hidden inside the namespace: {text!r}")

    def _write_files(self) -> None:
        """Create the workdir layout, the daemon configuration and the launch script."""
        for sub in ("etc", "sock", *_STATE_DIRS):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "etc" / "libvirtd.conf").write_text(self._libvirtd_conf())
        (self.workdir / "etc" / "qemu.conf").write_text(_QEMU_CONF)
        (self.workdir / "launch.sh").write_text(self._launch_script())
        self._load_qemu_caps()

    @property
    def _caps_dir(self) -> Path:
        """Where the private libvirtd caches QEMU capabilities (its /var/cache/libvirt)."""
        return self.workdir / "cache" / "qemu" / "capabilities"

    def _load_qemu_caps(self) -> None:
        """Seed the private capabilities cache from the shared one, if any."""
        if self.qemu_caps_cache is None:
            return
        self._caps_dir.mkdir(parents=True, exist_ok=True)
        for entry in self.qemu_caps_cache.glob("*.xml"):
            shutil.copy2(entry, self._caps_dir / entry.name)

    def _save_qemu_caps(self) -> None:
        """Publish this host's capabilities to the shared cache; atomic per file, best effort."""
        if self.qemu_caps_cache is None:
            return
        with contextlib.suppress(OSError):
            self.qemu_caps_cache.mkdir(parents=True, exist_ok=True)
            for entry in self._caps_dir.glob("*.xml"):
                partial = self.qemu_caps_cache / f".{entry.name}.{os.getpid()}.tmp"
                shutil.copy2(entry, partial)
                os.replace(partial, self.qemu_caps_cache / entry.name)

    def _libvirtd_conf(self) -> str:
        return (
            f'unix_sock_dir = "{self.workdir / "sock"}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'unix_sock_ro_perms = "0700"\n'
            'unix_sock_admin_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            "listen_tls = 0\n"
            "listen_tcp = 0\n"
            f'log_outputs = "3:file:{self.log_path}"\n'
        )

    def _launch_script(self) -> str:
        """The shell script run inside the fresh namespaces; it ends as libvirtd."""
        q = shlex.quote
        work = self.workdir
        binds = "".join(
            f"mount -n --bind {q(str(work / sub))} {q(target)}\n"
            for sub, target in {"etc": "/etc/libvirt", **_STATE_DIRS}.items()
        )
        # /run first and `mount -n`: mount(8) must not write /run/mount/utab on the machine.
        return (
            "set -eu\n"
            "mount -n -t tmpfs -o mode=0755 tmpfs /run\n"
            "mkdir -p /run/libvirt /run/lock\n"
            "mount -n -t sysfs sysfs /sys\n"
            f"{binds}"
            "ip link set lo up\n"
            "virtlogd -d\n"
            f"exec libvirtd -f {q(str(work / 'etc' / 'libvirtd.conf'))}\n"
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        """Run the launch script in new mount and network namespaces and a new session."""
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": str(self.workdir)}
        command = [
            "unshare",
            "--mount",
            "--net",
            "--propagation",
            "private",
            "/bin/sh",
            str(self.workdir / "launch.sh"),
        ]
        with open(self.launch_log_path, "ab") as log:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        (self.workdir / PID_FILE).write_text(f"{proc.pid}\n")
        return proc

    def _wait_until_ready(self, timeout: float) -> None:
        """Poll until a libvirt connection opens; raise HostStartError on exit or timeout."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise HostStartError(self._failure(f"libvirtd exited with status {code}"))
            self._pin_namespace()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostStartError(self._failure(f"not reachable after {timeout:g} s"))
            if self._netns_fd is not None and daemon_reachable(self.uri, min(remaining, 5)):
                return
            time.sleep(0.05)

    def _pin_namespace(self) -> None:
        """Hold the daemon's network namespace open once unshare has created it.

        The open descriptor keeps the namespace (and so its identity) alive until
        :meth:`stop` has killed every process in it.
        """
        if self._netns_fd is not None or self.pid is None:
            return
        try:
            fd = os.open(f"/proc/{self.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == _netns_id(os.getpid()):
            os.close(fd)  # unshare has not run yet
        else:
            self._netns_fd = fd

    def _failure(self, reason: str) -> str:
        return (
            f"{self!r}: {reason}\n"
            f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}\n"
            f"--- tail of {self.launch_log_path} ---\n{_tail(self.launch_log_path)}"
        )

    # -- stopping -------------------------------------------------------------------

    def _destroy_domains(self, timeout: float) -> None:
        """Destroy every running domain through libvirt, in parallel; best effort.

        Gives up after ``timeout`` seconds (the namespace sweep kills what is left).
        """

        def destroy_all() -> None:
            import libvirt

            def destroy(domain: Any) -> None:
                with contextlib.suppress(libvirt.libvirtError):
                    domain.destroy()  # one already gone is fine

            conn = libvirt.open(self.uri)
            try:
                domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
                if domains:
                    workers = min(len(domains), _DESTROY_WORKERS)
                    with ThreadPoolExecutor(workers) as pool:
                        list(pool.map(destroy, domains))
            finally:
                conn.close()

        if daemon_reachable(self.uri, timeout):
            _call_with_timeout(destroy_all, timeout)

    def _stop_daemon(self, timeout: float) -> None:
        """SIGTERM libvirtd by its pid, SIGKILL after ``timeout`` seconds, and reap it."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc.wait()

    def _kill_namespace(self, timeout: float) -> None:
        """Kill every process left in the host's network namespace and wait until none is."""
        if self._netns_fd is None:
            return
        if self._pinned_netns() == _netns_id(os.getpid()):
            raise RuntimeError("refusing to sweep the caller's own network namespace")
        _signal_all(self.namespace_pids(), signal.SIGTERM)
        if _wait_until(lambda: not self.namespace_pids(), min(timeout, 2)):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.namespace_pids()
            if not pids:
                return
            _signal_all(pids, signal.SIGKILL)
            time.sleep(0.05)
        raise RuntimeError(f"{self!r}: processes survived SIGKILL: {self.namespace_pids()}")

    def _pinned_netns(self) -> tuple[int, int] | None:
        """(device, inode) of the pinned network namespace, if pinned."""
        if self._netns_fd is None:
            return None
        st = os.fstat(self._netns_fd)
        return (st.st_dev, st.st_ino)

    def _release_namespace(self) -> None:
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None


_QEMU_CONF = """\
user = "root"
group = "root"
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
"""


# -- helpers ------------------------------------------------------------------------


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _create_unless(exists: Callable[[], bool], command: list[str]) -> None:
    """Run ``command`` unless ``exists()``; fine if a concurrent caller created it first."""
    if exists():
        return
    result = subprocess.run(command, capture_output=True, text=True, env={"PATH": _PATH}, check=False)
    if not exists():
        raise RuntimeError(f"{shlex.join(command)} failed: {result.stderr.strip()}")


def _socket_param(uri: str) -> str | None:
    """The ``socket=`` query parameter of a libvirt URI, if any."""
    values = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query).get("socket")
    return values[0] if values else None


def _socket_accepts(path: str, timeout: float) -> bool:
    """True if a unix stream socket at ``path`` accepts a connection."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def _call_with_timeout(func: Callable[[], _T], timeout: float) -> _T | None:
    """``func()``'s result, or None if it raised or ran longer than ``timeout`` seconds.

    A call that overruns keeps running in a daemon thread; its result is dropped.
    """
    result: list[_T] = []

    def run() -> None:
        with contextlib.suppress(Exception):
            result.append(func())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else None


def stop_detached(workdir: Path, timeout: float = 10) -> bool:
    """Stop a host started in `workdir` by another (possibly finished) process.

    Kills every process in the network namespace of the libvirtd recorded in the
    workdir's pid file. Returns False when no such daemon runs. Never touches the
    caller's own namespace.
    """
    try:
        pid = int((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return False
    netns = _netns_id(pid)
    if netns is None or netns == _netns_id(os.getpid()):
        return False
    members = lambda: [p for p in _all_pids() if _netns_id(p) == netns]  # noqa: E731
    _signal_all(members(), signal.SIGTERM)
    if not _wait_until(lambda: not members(), timeout):
        _signal_all(members(), signal.SIGKILL)
        _wait_until(lambda: not members(), timeout)
    (workdir / PID_FILE).unlink(missing_ok=True)
    return True


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def _netns_id(pid: int) -> tuple[int, int] | None:
    """(device, inode) of a process's network namespace; None if gone or a zombie."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 50 ms; True as soon as it holds, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"(unreadable: {err})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"
