"""Locks on the hosts: one change of a stack at a time (apply, destroy, clone, snapshot, adopt).

A stack's lock on a host is a libvirt secret there, kept only in the daemon's memory
(`ephemeral`), whose usage name is unique to the stack: `virtplan-lock:<stack key>`. libvirt
refuses to define a second secret with a usage that exists, so exactly one process holds
the lock, whichever machine it runs on and however it reaches the host (`qemu+ssh://`,
`qemu+tls://`, a local socket). The secret's description names the holder (user, machine,
pid, command, since): `virsh secret-list` shows who holds what.

While it holds a lock, a process renews it every `RENEW` seconds (the secret's value counts
the renewals). A lock is stale only when its holder is known to be gone:

- the holder runs on this machine (same host name, boot and pid namespace) and its process
  no longer exists (or the pid is another process now): released at once;
- the holder runs elsewhere and its renewals stopped for `LEASE` seconds, as measured by
  the waiting process's own clock (no clocks are compared across machines): released.

A stale lock is released by undefining that very secret (by its UUID, never a newer one);
then the waiter defines its own as anyone would, so two waiters never both take it. A
holder that stalled past its lease finds its lock gone at the next renewal and reports it
(`lost`). Locks on libvirt's in-process test driver (which has no secrets) are in-process.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from virtplan.errors import VirtplanError

RENEW = 2.0
LEASE = 15.0
POLL = 0.2
USAGE_PREFIX = "virtplan-lock:"
CLASH_RETRIES = 5  # defines refused while no holder is seen before the refusal is an error


class LockBusy(VirtplanError):
    """Another process holds a lock this process needs."""


class LockLost(VirtplanError):
    """This process's lock was taken over (it stalled past its lease)."""


@dataclass
class Holder:
    """Who holds (or held) a lock, and how to tell whether that process still lives."""

    pid: int
    user: str
    machine: str
    since: str  # ISO 8601, UTC
    command: str
    boot: str = ""
    pidns: int = 0
    start: int = 0  # the process's start time (clock ticks since boot)

    @classmethod
    def me(cls) -> Holder:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry for this uid
            user = str(os.getuid())
        command = " ".join(["virtplan", *sys.argv[1:]]) if sys.argv else "virtplan"
        since = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        pid = os.getpid()
        return cls(pid, user, socket.gethostname(), since, command, _boot_id(), _pidns(), _start_time(pid))

    def describe(self) -> str:
        return f"pid {self.pid} (user {self.user} on {self.machine}, since {self.since}: {self.command})"

    def gone(self) -> bool | None:
        """True if this process certainly no longer runs, False if it does, None if it is on
        another machine (its renewals tell)."""
        if self.machine != socket.gethostname() or not self.boot or self.boot != _boot_id() or self.pidns != _pidns():
            return None
        start = _start_time(self.pid)
        return start == 0 or start != self.start

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError):
            return None


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _pidns() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _start_time(pid: int) -> int:
    """The start time of process `pid` (0 if there is none)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of stat(5): starttime


# -- one lock on one host ---------------------------------------------------------------
class _SecretLock:
    """The lock of one stack on one host, held as an ephemeral libvirt secret."""

    def __init__(self, conn: Any, stack_key: str, what: str):
        self.conn, self.usage, self.what = conn, USAGE_PREFIX + stack_key, what
        self.secret: Any = None
        self.renewals = 0

    def try_acquire(self, me: Holder) -> bool:
        import libvirt

        root = ET.Element("secret", {"ephemeral": "yes", "private": "no"})
        ET.SubElement(root, "description").text = json.dumps(asdict(me), sort_keys=True)
        ET.SubElement(ET.SubElement(root, "usage", {"type": "tls"}), "name").text = self.usage
        document = ET.tostring(root, encoding="unicode")
        for attempt in range(CLASH_RETRIES):
            try:
                self.secret = self.conn.secretDefineXML(document, 0)
                break
            except libvirt.libvirtError:
                if self.current() is not None:
                    return False  # held by another process
                # Nobody holds it now: either the holder released it between our define and
                # this lookup (try again), or the define failed for a reason of its own (no
                # secret driver, permissions), which persists.
                if attempt == CLASH_RETRIES - 1:
                    raise
        self.secret.setValue(b"0", 0)
        return True

    def current(self) -> tuple[Any, Holder | None, bytes] | None:
        """The secret holding the lock now: (secret, holder, renewal value), or None."""
        import libvirt

        try:
            secret = self.conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_TLS, self.usage)
            description = ET.fromstring(secret.XMLDesc(0)).findtext("description") or ""
            try:
                value = bytes(secret.value(0))
            except libvirt.libvirtError:
                value = b""  # defined, not yet given a value
            return secret, Holder.parse(description), value
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise

    def renew(self) -> bool:
        """Count one more renewal; False if the lock is no longer ours."""
        import libvirt

        self.renewals += 1
        try:
            self.secret.setValue(str(self.renewals).encode(), 0)
            return True
        except libvirt.libvirtError:
            return False

    def release_stale(self, secret: Any) -> None:
        """Undefine exactly that (stale) secret; a newer holder's lock is never touched."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):  # another waiter released it first
            self.conn.secretLookupByUUIDString(secret.UUIDString()).undefine()

    def release(self) -> None:
        import libvirt

        if self.secret is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self.secret.undefine()
            self.secret = None


class _LocalLock:
    """The same lock for libvirt's in-process test driver: held in this process."""

    _held: dict[str, dict[str, Holder]] = {}
    _guard = threading.Lock()

    def __init__(self, conn: Any, stack_key: str, what: str):
        self.uri, self.key, self.what = str(conn.getURI()), stack_key, what
        self.renewals = 0

    def try_acquire(self, me: Holder) -> bool:
        with self._guard:
            held = self._held.setdefault(self.uri, {})
            if self.key in held:
                return False
            held[self.key] = me
            return True

    def current(self) -> tuple[Any, Holder | None, bytes] | None:
        with self._guard:
            holder = self._held.get(self.uri, {}).get(self.key)
        return None if holder is None else (None, holder, b"")

    def renew(self) -> bool:
        return True

    def release_stale(self, secret: Any) -> None:
        pass

    def release(self) -> None:
        with self._guard:
            self._held.get(self.uri, {}).pop(self.key, None)


def lock_for(conn: Any, stack_key: str, what: str) -> _SecretLock | _LocalLock:
    if conn.getType().lower() == "test":
        return _LocalLock(conn, stack_key, what)
    return _SecretLock(conn, stack_key, what)


# -- all hosts of a stack -----------------------------------------------------------------
class HostLocks:
    """The stack's lock on each of its hosts, taken in one global order (by host URI),
    held until exit, renewed meanwhile. `notes()` says which stale locks were released."""

    def __init__(
        self,
        stack_key: str,
        hosts: dict[str, tuple[str, Any]],
        timeout: float = 0.0,
        waiting: Callable[[str], None] | None = None,
    ):
        """`hosts` maps host name -> (URI, connection); `waiting` is told, once per lock,
        what this process waits for when a lock is busy and `timeout` allows waiting."""
        self.timeout = max(0.0, timeout)
        self.waiting = waiting
        self.locks = [
            lock_for(conn, stack_key, f"stack {stack_key!r} on host {name!r} ({uri})")
            for name, (uri, conn) in sorted(hosts.items(), key=lambda item: item[1][0])
        ]
        self.released: list[tuple[str, Holder | None, str]] = []
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self.lost: list[str] = []

    def __enter__(self) -> HostLocks:
        me = Holder.me()
        deadline = time.monotonic() + self.timeout
        taken: list[_SecretLock | _LocalLock] = []
        try:
            for lock in self.locks:
                self._acquire(lock, me, deadline)
                taken.append(lock)
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        self._renewer = threading.Thread(target=self._renew, name="virtplan-lock-renewer", daemon=True)
        self._renewer.start()
        return self

    def _acquire(self, lock: _SecretLock | _LocalLock, me: Holder, deadline: float) -> None:
        seen: tuple[str, bytes] | None = None  # (secret uuid, renewal value) last seen
        since = time.monotonic()
        said = False
        while True:
            if lock.try_acquire(me):
                return
            found = lock.current()
            if found is None:
                continue  # released just now: try again at once
            secret, holder, value = found
            gone = holder.gone() if holder is not None else None
            ident = (secret.UUIDString() if secret is not None else "", value)
            if ident != seen:
                seen, since = ident, time.monotonic()
            silent = time.monotonic() - since
            if gone or (gone is None and secret is not None and silent >= LEASE):
                why = "which is no longer running" if gone else f"which stopped renewing it {silent:.0f} s ago"
                self.released.append((lock.what, holder, why))
                lock.release_stale(secret)
                continue
            if time.monotonic() >= deadline:
                raise LockBusy(_busy(lock.what, holder, self.timeout))
            if not said and self.waiting is not None:
                who = holder.describe() if holder is not None else "another process"
                self.waiting(
                    f"waiting up to {deadline - time.monotonic():.0f} s for the lock on {lock.what}, held by {who}"
                )
                said = True
            time.sleep(POLL)

    def _renew(self) -> None:
        while not self._stop.wait(RENEW):
            for lock in self.locks:
                if not lock.renew() and lock.what not in self.lost:
                    self.lost.append(lock.what)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=RENEW + 1)
        for lock in reversed(self.locks):
            lock.release()

    def check(self) -> None:
        """Raise LockLost if a lock was taken over while this process held it."""
        if self.lost:
            raise LockLost(
                f"lost the lock on {', '.join(self.lost)}: this process stopped renewing it for {LEASE:g} s and "
                "another one took it over; nothing more is applied"
            )

    def notes(self) -> list[str]:
        """One line per stale lock released."""
        return [
            f"released the lock on {what} left by {holder.describe() if holder else 'an unknown holder'}, {why}"
            for what, holder, why in self.released
        ]


def _busy(what: str, holder: Holder | None, timeout: float) -> str:
    who = holder.describe() if holder is not None else "another process (it has not said who yet)"
    waited = f"waited {timeout:g} s" if timeout > 0 else "did not wait (--lock-timeout 0)"
    return (
        f"{what} is locked by {who}; {waited}. Nothing was changed. "
        "Wait for it to finish, or re-run with --lock-timeout SECONDS to wait."
    )
