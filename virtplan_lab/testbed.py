"""Private libvirt hosts for tests: a real ``libvirtd`` + QEMU in their own namespaces.

A :class:`PrivateHost` runs ``virtlogd`` and ``libvirtd`` inside
``unshare --mount --net --propagation private``.  Inside those namespaces:

- ``/etc/libvirt`` is ``<workdir>/etc``, holding only ``libvirtd.conf`` and ``qemu.conf``;
- ``/run`` is a fresh tmpfs (so ``/run/libvirt`` and virtlogd's socket are private);
- ``/sys`` is a fresh sysfs, showing the namespace's network devices only;
- ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt`` are
  directories under ``<workdir>``;
- the network namespace is new: only ``lo``, which is brought up;
- the UTS namespace is new: the host's hostname is its name (what ``getHostname()``
  answers), and its ``libvirtd.conf`` sets a ``host_uuid`` of its own (otherwise all
  hosts share the machine's SMBIOS UUID, and libvirt refuses a migration between two
  of them: "Attempt to migrate guest to the same host").

A host given a :class:`RemoteAccess` (see :mod:`virtplan_lab.lab`, which builds them)
is also a machine on a lab network (:mod:`virtplan_lab.labnet`): its namespace gets an
``eth0`` with its own address, reachable from the caller and from the other hosts of
that network, and it may run

- a real OpenSSH ``sshd`` on port 22, accepting one client key for ``root``, so that
  ``qemu+ssh://root@<address>/system`` works (the remote side runs libvirt's
  ``virt-ssh-helper``, which finds the daemon through ``/run/libvirt/libvirt-sock``, a
  link to the socket in ``<workdir>/sock``); ``/root`` is then an empty private folder;
- libvirtd's TLS listener on port 16514 with a server certificate signed by the lab's CA
  (``qemu+tls://<address>/system?pkipath=...``).

Its ``qemu.conf`` sets ``migration_host`` to its address, so QEMU migration and NBD
traffic between two hosts of one lab goes over the lab network.

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
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from virtplan_lab.credentials import CertificateAuthority
    from virtplan_lab.labnet import LabNetwork

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
#: Also needed by hosts on a lab network with sshd or TLS.
_REMOTE_COMMANDS = ("nsenter", "sshd", "ssh", "ssh-keygen", "openssl", "virt-ssh-helper")
SSH_PORT = 22
TLS_PORT = 16514
_LOG_TAIL_LINES = 30
#: Domains destroyed at once by stop(): QEMU takes ~1.5 s to die, mostly waiting.
_DESTROY_WORKERS = 16


class HostStartError(RuntimeError):
    """A private host did not come up; the message carries the tail of its logs."""


@dataclass(frozen=True)
class RemoteAccess:
    """Where a private host sits on a lab network and which remote services it runs.

    - ``network``, ``slot``: the lab network and the host's place on it (its address
      is ``network.address(slot)``);
    - ``ssh_client_key``: the public key allowed to log in as ``root`` through the
      host's own sshd; None: no sshd;
    - ``tls_ca``: the CA that signs the host's server certificate; None: no TLS listener;
    - ``tls_client_pki``: the ``pkipath`` folder clients use (it goes into ``tls_uri``);
    - ``client_path``: a folder put first on the daemons' PATH (the lab's ``ssh``
      wrapper), so the host's own outgoing connections, e.g. peer-to-peer migration,
      use the lab's ssh configuration and known hosts;
    - ``ssh_identity``, ``known_hosts``: the lab's client key and known_hosts files,
      for URIs of libvirt's built-in ssh clients (``qemu+libssh2://``), which take them
      as URI parameters.
    """

    network: LabNetwork
    slot: int
    ssh_client_key: str | None = None
    tls_ca: CertificateAuthority | None = None
    tls_client_pki: Path | None = None
    client_path: Path | None = None
    ssh_identity: Path | None = None
    known_hosts: Path | None = None

    @property
    def address(self) -> str:
        return self.network.address(self.slot)


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


def missing_prereqs(remote: bool = False) -> list[str]:
    """Why a private host cannot start here (not root, commands missing); empty if it can.

    With ``remote``, also the commands a networked host with sshd and TLS needs.
    """
    problems = [] if os.geteuid() == 0 else ["not running as root"]
    commands = _REQUIRED_COMMANDS + (_REMOTE_COMMANDS if remote else ())
    problems += [f"command not found: {command}" for command in commands if shutil.which(command, path=_PATH) is None]
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

    def __init__(
        self,
        workdir: Path,
        name: str = "host",
        qemu_caps_cache: Path | None = None,
        remote: RemoteAccess | None = None,
    ) -> None:
        self.workdir = Path(workdir).absolute()
        self.name = name
        self.qemu_caps_cache = qemu_caps_cache
        self.remote = remote
        self.hostname = _hostname(name)
        self._check_workdir()
        self._proc: subprocess.Popen[bytes] | None = None
        self._netns_fd: int | None = None
        self._attached = False

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

    # -- on a lab network -------------------------------------------------------------

    @property
    def address(self) -> str:
        """The host's IPv4 address on its lab network."""
        return self._remote.address

    @property
    def ssh_uri(self) -> str:
        """``qemu+ssh://root@<address>/system``: what a user writes; the lab's ssh config does the rest."""
        if self._remote.ssh_client_key is None:
            raise RuntimeError(f"{self!r} runs no sshd")
        return f"qemu+ssh://root@{self.address}/system"

    @property
    def libssh2_uri(self) -> str:
        """The same sshd through libvirt's built-in ssh client (libssh2), which takes the key and
        known_hosts as URI parameters: no ssh process, no ssh configuration needed.

        Not ``qemu+libssh://``: with libvirt 9.0 and Debian 12's libssh 0.10 it hangs on
        any reply larger than a few kilobytes (``getCapabilities``, ``XMLDesc``).
        """
        remote = self._remote
        if remote.ssh_client_key is None or remote.ssh_identity is None or remote.known_hosts is None:
            raise RuntimeError(f"{self!r} runs no sshd")
        return (
            f"qemu+libssh2://root@{self.address}/system?keyfile={remote.ssh_identity}"
            f"&known_hosts={remote.known_hosts}&known_hosts_verify=normal&sshauth=privkey"
        )

    @property
    def tls_uri(self) -> str:
        """``qemu+tls://<address>/system?pkipath=<the lab's client certificates>``."""
        if self._remote.tls_ca is None or self._remote.tls_client_pki is None:
            raise RuntimeError(f"{self!r} has no TLS listener")
        return f"qemu+tls://{self.address}/system?pkipath={self._remote.tls_client_pki}"

    @property
    def ssh_dir(self) -> Path:
        """sshd's configuration, host key, authorized keys and pid file."""
        return self.workdir / "ssh"

    @property
    def ssh_host_key_path(self) -> Path:
        return self.ssh_dir / "ssh_host_ed25519_key"

    @property
    def ssh_host_public_key(self) -> str:
        """The sshd's public host key line (``ssh-ed25519 AAAA... comment``)."""
        return self.ssh_host_key_path.with_name(self.ssh_host_key_path.name + ".pub").read_text().strip()

    @property
    def sshd_log_path(self) -> Path:
        return self.workdir / "sshd.log"

    @property
    def pki_dir(self) -> Path:
        """libvirtd's TLS server files: ``cacert.pem``, ``servercert.pem``, ``serverkey.pem``."""
        return self.workdir / "pki"

    def replace_ssh_host_key(self, timeout: float = 10) -> str:
        """Give the running sshd a new host key (as a reinstalled or spoofed host would have).

        Clients' known_hosts are not told.  Returns the new public key line once sshd
        listens again.
        """
        from virtplan_lab.credentials import ssh_keypair

        pid = int((self.ssh_dir / "sshd.pid").read_text())
        starts = self._sshd_starts()
        public = ssh_keypair(self.ssh_host_key_path, f"root@{self.hostname}")
        os.kill(pid, signal.SIGHUP)  # sshd re-executes itself and re-reads its keys
        deadline = time.monotonic() + timeout
        while self._sshd_starts() <= starts or not _ssh_banner(self.address, SSH_PORT):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self!r}: sshd did not come back after SIGHUP:\n{_tail(self.sshd_log_path)}")
            time.sleep(0.05)
        return public

    def _sshd_starts(self) -> int:
        """How many times sshd has logged that it listens (once per start or SIGHUP)."""
        try:
            return self.sshd_log_path.read_text(errors="replace").count("Server listening on")
        except OSError:
            return 0

    @property
    def _remote(self) -> RemoteAccess:
        if self.remote is None:
            raise RuntimeError(f"{self!r} is not on a lab network")
        return self.remote

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
        problems = missing_prereqs(remote=self.remote is not None)
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
            if self.remote is not None and self._attached:
                self.remote.network.detach(self.remote.slot)
                self._attached = False

    def restart_daemon(self, timeout: float = 30) -> None:
        """Restart libvirtd alone, as an operator's ``systemctl restart libvirtd`` does:
        SIGTERM (running guests, virtlogd and dnsmasq go on), then a new libvirtd in the
        same namespaces, which reconnects to the guests. Clients' connections break."""
        if self._proc is None or self.pid is None:
            raise RuntimeError(f"{self!r} is not running")
        old = self.pid
        keeper = next((p for p in self.namespace_pids() if p != old and _comm(p) == "virtlogd"), None)
        if keeper is None:
            raise RuntimeError(f"{self!r}: no virtlogd in its namespace to enter")
        self._stop_daemon(timeout)
        conf = str(self.workdir / "etc" / "libvirtd.conf")
        listen = ["--listen"] if self._tls else []
        command = ["nsenter", "--target", str(keeper), "--mount", "--net", "--uts", "--", "libvirtd", *listen, "-f",
                   conf]  # fmt: skip
        env = {"PATH": _PATH, "LANG": "C.UTF-8", "HOME": str(self.workdir)}
        with open(self.launch_log_path, "ab") as log:
            self._proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        (self.workdir / PID_FILE).write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not daemon_reachable(self.uri, 5):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise HostStartError(self._failure("libvirtd did not come back after a restart"))
            time.sleep(0.05)

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
        where = f", address={self.remote.address!r}" if self.remote is not None else ""
        return f"PrivateHost({self.name!r}, workdir={str(self.workdir)!r}{where})"

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
        (self.workdir / "etc" / "qemu.conf").write_text(self._qemu_conf())
        if self.remote is not None:
            self._write_remote_files(self.remote)
        (self.workdir / "launch.sh").write_text(self._launch_script())
        self._load_qemu_caps()

    def _write_remote_files(self, remote: RemoteAccess) -> None:
        """The private /root, sshd's keys and configuration, libvirtd's TLS files."""
        from virtplan_lab.credentials import ssh_keypair

        (self.workdir / "home").mkdir(mode=0o700, exist_ok=True)
        if remote.ssh_client_key is not None:
            self.ssh_dir.mkdir(mode=0o700, exist_ok=True)
            ssh_keypair(self.ssh_host_key_path, f"root@{self.hostname}")
            (self.ssh_dir / "authorized_keys").write_text(remote.ssh_client_key + "\n")
            (self.ssh_dir / "sshd_config").write_text(self._sshd_config())
        if remote.tls_ca is not None:
            self.pki_dir.mkdir(mode=0o700, exist_ok=True)
            shutil.copyfile(remote.tls_ca.cert, self.pki_dir / "cacert.pem")
            remote.tls_ca.issue(
                self.pki_dir / "serverkey.pem",
                self.pki_dir / "servercert.pem",
                self.hostname,
                server=True,
                addresses=(remote.address,),
            )

    def _sshd_config(self) -> str:
        ssh = self.ssh_dir
        return (
            f"Port {SSH_PORT}\n"
            "ListenAddress 0.0.0.0\n"
            f"HostKey {ssh / 'ssh_host_ed25519_key'}\n"
            f"PidFile {ssh / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {ssh / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "AllowUsers root\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The workdir lies under /var/tmp (world-writable): sshd's path checks would refuse it.
            "StrictModes no\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            "AllowAgentForwarding no\n"
            "AllowTcpForwarding no\n"
            "PermitTunnel no\n"
            # Many clients at once (a fleet plan opens one connection per host and thread).
            "MaxStartups 200:30:400\n"
            "LogLevel VERBOSE\n"
        )

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

    @property
    def _tls(self) -> bool:
        return self.remote is not None and self.remote.tls_ca is not None

    @property
    def _ssh(self) -> bool:
        return self.remote is not None and self.remote.ssh_client_key is not None

    def _libvirtd_conf(self) -> str:
        conf = (
            f'unix_sock_dir = "{self.workdir / "sock"}"\n'
            'unix_sock_rw_perms = "0700"\n'
            'unix_sock_ro_perms = "0700"\n'
            'unix_sock_admin_perms = "0700"\n'
            'auth_unix_rw = "none"\n'
            'auth_unix_ro = "none"\n'
            "listen_tcp = 0\n"
            f'log_outputs = "3:file:{self.log_path}"\n'
            # Not the machine's SMBIOS UUID: libvirt refuses to migrate to "the same host".
            f'host_uuid = "{uuid.uuid4()}"\n'
        )
        if not self._tls:
            return conf + "listen_tls = 0\n"
        pki = self.pki_dir
        return conf + (
            "listen_tls = 1\n"
            'listen_addr = "0.0.0.0"\n'
            f'tls_port = "{TLS_PORT}"\n'
            'auth_tls = "none"\n'
            f'ca_file = "{pki / "cacert.pem"}"\n'
            f'cert_file = "{pki / "servercert.pem"}"\n'
            f'key_file = "{pki / "serverkey.pem"}"\n'
        )

    def _qemu_conf(self) -> str:
        if self.remote is None:
            return _QEMU_CONF
        # QEMU's migration and NBD listeners, and the address the source connects to.
        return _QEMU_CONF + f'migration_host = "{self.remote.address}"\n'

    def _launch_script(self) -> str:
        """The shell script run inside the fresh namespaces; it ends as libvirtd."""
        q = shlex.quote
        work = self.workdir
        binds = "".join(
            f"mount -n --bind {q(str(work / sub))} {q(target)}\n"
            for sub, target in {"etc": "/etc/libvirt", **_STATE_DIRS}.items()
        )
        remote = ""
        if self.remote is not None:
            remote += f"mount -n --bind {q(str(work / 'home'))} /root\n"
        if self._ssh:
            # virt-ssh-helper (run by sshd for qemu+ssh) looks for the daemon at the default path.
            remote += (
                f"ln -s {q(str(self.socket_path))} /run/libvirt/libvirt-sock\n"
                f"ln -s {q(str(self.socket_path))}-ro /run/libvirt/libvirt-sock-ro\n"
                "mkdir -p -m 0755 /run/sshd\n"
                f"/usr/sbin/sshd -f {q(str(self.ssh_dir / 'sshd_config'))} -E {q(str(self.sshd_log_path))}\n"
            )
        listen = "--listen " if self._tls else ""
        # /run first and `mount -n`: mount(8) must not write /run/mount/utab on the machine.
        return (
            "set -eu\n"
            "mount -n -t tmpfs -o mode=0755 tmpfs /run\n"
            "mkdir -p /run/libvirt /run/lock\n"
            "mount -n -t sysfs sysfs /sys\n"
            f"{binds}"
            f"hostname {q(self.hostname)}\n"
            "ip link set lo up\n"
            f"{remote}"
            "virtlogd -d\n"
            f"exec libvirtd {listen}-f {q(str(work / 'etc' / 'libvirtd.conf'))}\n"
        )

    def _launch(self) -> subprocess.Popen[bytes]:
        """Run the launch script in new mount and network namespaces and a new session."""
        path = _PATH
        if self.remote is not None and self.remote.client_path is not None:
            path = f"{self.remote.client_path}:{path}"
        env = {"PATH": path, "LANG": "C.UTF-8", "HOME": str(self.workdir)}
        command = [
            "unshare",
            "--mount",
            "--net",
            "--uts",
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
            self._attach_network()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostStartError(self._failure(f"not reachable after {timeout:g} s"))
            if self._netns_fd is not None and daemon_reachable(self.uri, min(remaining, 5)):
                break
            time.sleep(0.05)
        for port, enabled in ((SSH_PORT, self._ssh), (TLS_PORT, self._tls)):
            while enabled and not _tcp_accepts(self.address, port, 1.0):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise HostStartError(self._failure(f"{self.address}:{port} does not accept connections"))
                time.sleep(0.05)

    def _attach_network(self) -> None:
        """Once the namespace is pinned, give it its ``eth0`` on the lab network."""
        if self.remote is None or self._attached or self._netns_fd is None:
            return
        try:
            self.remote.network.attach(self._netns_fd, self.remote.slot)
        except RuntimeError as err:
            raise HostStartError(self._failure(f"cannot join the lab network: {err}")) from err
        self._attached = True

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
        logs = [self.log_path, self.launch_log_path] + ([self.sshd_log_path] if self._ssh else [])
        tails = "\n".join(f"--- tail of {log} ---\n{_tail(log)}" for log in logs)
        return f"{self!r}: {reason}\n{tails}"

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


def _hostname(name: str) -> str:
    """A valid hostname from a host's name (letters, digits, hyphens; at most 63)."""
    return re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:63].strip("-") or "host"


def _tcp_accepts(address: str, port: int, timeout: float) -> bool:
    """True if a TCP connection to ``address:port`` is accepted within ``timeout`` seconds."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def _ssh_banner(address: str, port: int) -> bool:
    """True if an sshd at ``address:port`` answers with its banner."""
    try:
        with socket.create_connection((address, port), timeout=1.0) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


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


#: virtplan's own records pool on every host it manages (virtplan.hosts.ledger).
RECORDS_POOL = "virtplan"


def user_pools(conn: Any) -> list[Any]:
    """The storage pools of a host other than virtplan's records pool (which stays on a
    host virtplan managed, holding nothing once every stack is destroyed)."""
    return [p for p in conn.listAllStoragePools() if p.name() != RECORDS_POOL]


def _comm(pid: int) -> str:
    """A process's command name ("" if it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
