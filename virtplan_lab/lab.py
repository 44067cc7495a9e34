"""A lab: private hosts that are machines on one network, reached over ssh and TLS.

A :class:`Lab` owns

- a :class:`~virtplan_lab.labnet.LabNetwork` (``10.250.K.0/24``; the caller is ``.1``);
- an ssh client identity: a key pair, a ``known_hosts`` file holding exactly the host
  keys of its running hosts, an ssh ``config`` for ``Host 10.250.K.*`` naming both, and
  an ``ssh`` wrapper (``<lab>/bin/ssh`` = ``ssh -F <lab>/ssh/config``) that plays the
  part of a user's ``~/.ssh/config`` without touching ``~/.ssh``.  libvirt runs ``ssh``
  from ``PATH``, so with :meth:`Lab.env` (or the ``PATH`` it returns) the URI stays
  exactly what a user writes: ``qemu+ssh://root@10.250.K.N/system``.  Host keys are
  verified (``StrictHostKeyChecking yes``); nothing is ever accepted blindly.  libvirt's
  ``qemu+ssh`` (the ssh binary) has no URI parameter for a known_hosts file; its
  built-in client does: ``PrivateHost.libssh2_uri`` (``qemu+libssh2://...?keyfile=...
  &known_hosts=...&known_hosts_verify=normal``) reaches the same sshd without the wrapper;
- a TLS CA, and a client ``pkipath`` folder signed by it;
- its hosts (:class:`~virtplan_lab.testbed.PrivateHost` with a
  :class:`~virtplan_lab.testbed.RemoteAccess`), each with an address on the network,
  optionally its own sshd and/or libvirtd TLS listener.  Hosts reach each other on
  every port, and each host's own outgoing ssh (peer-to-peer migration) uses the lab's
  ssh configuration too.

Usable from pytest fixtures (``tests/conftest.py``) and from scripts (benchmarks)::

    with Lab(qemu_caps_cache=Path("/var/tmp/virtplan-qemu-caps")) as lab:
        hosts = lab.start_hosts(8, ssh=True)
        subprocess.run([..., "virtplan", "plan", ...], env=lab.env())
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import tempfile
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virtplan_lab.credentials import CertificateAuthority, ssh_keypair
from virtplan_lab.labnet import FIRST_SLOT, LAST_SLOT, LabNetwork
from virtplan_lab.testbed import HostStartError, PrivateHost, RemoteAccess, missing_prereqs

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Hosts started at once by start_hosts(): libvirtd start-up is mostly waiting.
_START_WORKERS = 8


class Lab:
    """A lab network, the credentials to reach its hosts, and the hosts on it."""

    def __init__(self, workdir: Path | None = None, qemu_caps_cache: Path | None = None) -> None:
        self.qemu_caps_cache = qemu_caps_cache
        self.network = LabNetwork()
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._hosts: dict[int, PrivateHost] = {}  # slot -> host
        self._last_slot = FIRST_SLOT - 1
        self._lock = threading.Lock()
        self.ca: CertificateAuthority | None = None

    # -- paths and settings for clients ---------------------------------------------------

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("lab not started")
        return self._workdir

    @property
    def ssh_dir(self) -> Path:
        return self.workdir / "ssh"

    @property
    def ssh_config(self) -> Path:
        """The ssh client configuration for this lab's hosts (what ``~/.ssh/config`` would hold)."""
        return self.ssh_dir / "config"

    @property
    def known_hosts(self) -> Path:
        """The host keys of the lab's running sshd hosts, by address."""
        return self.ssh_dir / "known_hosts"

    @property
    def client_key(self) -> Path:
        """The private key every lab sshd accepts for ``root``."""
        return self.ssh_dir / "id_ed25519"

    @property
    def bin_dir(self) -> Path:
        """Holds the ``ssh`` wrapper; put it first on ``PATH`` (see :meth:`env`)."""
        return self.workdir / "bin"

    @property
    def pki_path(self) -> Path:
        """A libvirt client ``pkipath``: ``cacert.pem``, ``clientcert.pem``, ``clientkey.pem``."""
        return self.workdir / "pki" / "client"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the lab's ``ssh`` first on PATH."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH') or _PATH}"
        return env

    @property
    def hosts(self) -> list[PrivateHost]:
        with self._lock:
            return [self._hosts[slot] for slot in sorted(self._hosts)]

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Lab:
        problems = missing_prereqs(remote=True)
        if problems:
            raise HostStartError(f"a lab cannot start here: {'; '.join(problems)}")
        if self._given_workdir is not None:
            self._given_workdir.mkdir(parents=True, exist_ok=True)
            self._workdir = self._given_workdir
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="vplab-", dir="/var/tmp"))
        try:
            self.network.start()
            self._write_ssh_client()
            self.ca = CertificateAuthority.create(
                self.workdir / "pki" / "ca", f"virtplan lab CA {self.network.gateway}"
            )
            self.ca.client_pkipath(self.pki_path, "virtplan-client")
        except BaseException:
            self.close()
            raise
        return self

    def add_host(
        self, name: str | None = None, *, ssh: bool = True, tls: bool = False, timeout: float = 60
    ) -> PrivateHost:
        """Start a new host on the lab network (with sshd and/or a TLS listener) and return it.

        ``name`` (default ``lab<K>-<slot>``) is also its hostname; it must be unique in the lab.
        """
        with self._lock:
            slot = self._free_slot()
            name = name or f"lab{self.network.index}-{slot}"
            if any(h.name == name for h in self._hosts.values()):
                raise ValueError(f"{self!r} already has a host named {name!r}")
            remote = RemoteAccess(
                network=self.network,
                slot=slot,
                ssh_client_key=self.client_key.with_suffix(".pub").read_text().strip() if ssh else None,
                tls_ca=self.ca if tls else None,
                tls_client_pki=self.pki_path if tls else None,
                client_path=self.bin_dir,
                ssh_identity=self.client_key,
                known_hosts=self.known_hosts,
            )
            workdir = Path(tempfile.mkdtemp(prefix="vp-", dir="/var/tmp"))  # short: socket paths
            host = PrivateHost(workdir, name, qemu_caps_cache=self.qemu_caps_cache, remote=remote)
            self._hosts[slot] = host
        try:
            host.start(timeout)
        except BaseException:
            self._forget(host)
            raise
        self._write_known_hosts()
        return host

    def start_hosts(
        self, count: int, *, prefix: str | None = None, ssh: bool = True, tls: bool = False, timeout: float = 60
    ) -> list[PrivateHost]:
        """Start ``count`` hosts at once (named ``<prefix>1``... when ``prefix`` is given).

        Returns them in that order.  If any fails, the others are stopped and the first
        error is raised.
        """
        names: list[str | None] = [f"{prefix}{i}" for i in range(1, count + 1)] if prefix else [None] * count
        started: dict[int, PrivateHost] = {}
        errors: list[BaseException] = []

        def start(position: int) -> None:
            try:
                started[position] = self.add_host(names[position], ssh=ssh, tls=tls, timeout=timeout)
            except BaseException as err:
                errors.append(err)

        with ThreadPoolExecutor(max(1, min(count, _START_WORKERS))) as pool:
            list(pool.map(start, range(count)))
        if errors:
            for host in started.values():
                self.remove_host(host)
            raise errors[0]
        return [started[position] for position in range(count)]

    def remove_host(self, host: PrivateHost) -> None:
        """Stop a host, free its address and workdir, and drop its key from known_hosts."""
        try:
            host.stop()
        finally:
            self._forget(host)
            self._write_known_hosts()

    def close(self) -> None:
        """Stop every host, destroy the network, delete the lab's files; idempotent."""
        hosts = self.hosts
        try:
            if hosts:
                with ThreadPoolExecutor(min(len(hosts), _START_WORKERS)) as pool:
                    list(pool.map(self.remove_host, hosts))
        finally:
            self.network.close()
            if self._workdir is not None and self._given_workdir is None:
                shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Lab({self.network!r}, {len(self._hosts)} hosts)"

    # -- internals --------------------------------------------------------------------------

    def _free_slot(self) -> int:
        """The next free slot after the last one given out (addresses are reused last)."""
        span = LAST_SLOT - FIRST_SLOT + 1
        for step in range(1, span + 1):
            slot = FIRST_SLOT + (self._last_slot - FIRST_SLOT + step) % span
            if slot not in self._hosts:
                self._last_slot = slot
                return slot
        raise HostStartError(f"{self!r} is full")

    def _forget(self, host: PrivateHost) -> None:
        with self._lock:
            if host.remote is not None and self._hosts.get(host.remote.slot) is host:
                del self._hosts[host.remote.slot]
        shutil.rmtree(host.workdir, ignore_errors=True)

    def _write_ssh_client(self) -> None:
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ssh_keypair(self.client_key, "virtplan-lab-client")
        self.known_hosts.write_text("")
        subnet = self.network.subnet
        pattern = ".".join(str(subnet.network_address).split(".")[:3]) + ".*"
        self.ssh_config.write_text(
            f"# The lab's hosts ({subnet}): what a user's ~/.ssh/config would say.\n"
            f"Host {pattern}\n"
            "    User root\n"
            f"    IdentityFile {self.client_key}\n"
            "    IdentitiesOnly yes\n"
            f"    UserKnownHostsFile {self.known_hosts}\n"
            "    GlobalKnownHostsFile /dev/null\n"
            "    StrictHostKeyChecking yes\n"
            "    UpdateHostKeys no\n"
            "    BatchMode yes\n"
        )
        real_ssh = shutil.which("ssh", path=_PATH)
        if real_ssh is None:
            raise HostStartError("command not found: ssh")
        self.bin_dir.mkdir(exist_ok=True)
        wrapper = self.bin_dir / "ssh"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# ssh with this lab's client configuration (in place of ~/.ssh/config).\n"
            f'exec {shlex.quote(real_ssh)} -F {shlex.quote(str(self.ssh_config))} "$@"\n'
        )
        wrapper.chmod(0o755)

    def _write_known_hosts(self) -> None:
        """Rewrite known_hosts atomically: one line per running host with an sshd."""
        with self._lock:
            if self._workdir is None:
                return
            lines = []
            for slot in sorted(self._hosts):
                host = self._hosts[slot]
                if host.running and host.remote is not None and host.remote.ssh_client_key is not None:
                    with contextlib.suppress(OSError):
                        keytype, key = host.ssh_host_public_key.split()[:2]
                        lines.append(f"{host.address} {keytype} {key}\n")
            partial = self.known_hosts.with_name(f".known_hosts.{os.getpid()}.{threading.get_ident()}")
            partial.write_text("".join(lines))
            os.replace(partial, self.known_hosts)
