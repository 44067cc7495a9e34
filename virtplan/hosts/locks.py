"""Locks that keep two applies of one stack from interleaving.

`apply` and `destroy` take, before they observe anything:

- the stack's lock, beside its state record (`<state>.apply.lock`): one writer of the
  record at a time;
- one lock per host of the stack, in a machine-wide folder (`$VIRTPLAN_LOCK_DIR`, else
  `<tmp>/virtplan-locks`), keyed by host URI *and* stack name: two checkouts of the same
  stack (different state folders) still exclude each other on a host, while different
  stacks on one host, which own disjoint objects, apply concurrently.

They are `flock(2)` locks: the kernel drops a lock when its process dies, so a crashed or
killed apply never blocks the next one. The holder writes who it is (pid, user, machine,
since when, command) into the lock file for the message a blocked process prints; a
clean release empties the file, so a record found on acquiring names a process that died
holding the lock, and is reported as released. Locks are taken in one global order
(stack, then hosts by key), so two processes never deadlock. `filelock` is not used
here because it truncates the file on every attempt, which would erase the holder record.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from virtplan.errors import VirtplanError

LOCK_DIR_ENV = "VIRTPLAN_LOCK_DIR"
POLL_SECONDS = 0.1


class LockBusy(VirtplanError):
    """Another process holds a lock this process needs."""


@dataclass
class Holder:
    """Who holds (or held) a lock."""

    pid: int
    user: str
    machine: str
    since: str  # ISO 8601, UTC
    command: str

    @classmethod
    def me(cls) -> Holder:
        try:
            user = getpass.getuser()
        except Exception:  # no passwd entry for this uid
            user = str(os.getuid())
        command = " ".join(["virtplan", *sys.argv[1:]]) if sys.argv else "virtplan"
        since = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
        return cls(os.getpid(), user, socket.gethostname(), since, command)

    def describe(self) -> str:
        return f"pid {self.pid} (user {self.user} on {self.machine}, since {self.since}: {self.command})"


def lock_dir() -> Path:
    """The machine-wide folder of host locks."""
    env = os.environ.get(LOCK_DIR_ENV)
    folder = Path(env) if env else Path(tempfile.gettempdir()) / "virtplan-locks"
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        if not env:
            with contextlib.suppress(OSError):  # shared by all users, like /tmp
                folder.chmod(0o1777)
    return folder


def host_lock_path(uri: str, stack: str) -> Path:
    key = hashlib.sha256(f"{uri}\0{stack}".encode()).hexdigest()[:24]
    return lock_dir() / f"host-{key}.lock"


def stack_lock_path(state_path: Path) -> Path:
    return state_path.with_name(state_path.name + ".apply.lock")


class FileLock:
    """One exclusive flock on one file, with the holder record inside it."""

    def __init__(self, path: Path, what: str):
        self.path, self.what = path, what
        self._fd: int | None = None
        self._writable = False

    def acquire(self, deadline: float, timeout: float) -> Holder | None:
        """Take the lock before `deadline` (time.monotonic) or raise LockBusy naming the
        holder. Returns the record of a process that died holding it, if there was one."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            with contextlib.suppress(OSError):  # let other users take it too, whatever the umask
                os.fchmod(fd, 0o666)
        except PermissionError:  # another user's lock file: flock works read-only too
            fd, writable = os.open(self.path, os.O_RDONLY), False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockBusy(self._busy_message(fd, timeout)) from None
                    time.sleep(POLL_SECONDS)
            dead = _read_holder(fd)
            if writable:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(Holder.me().__dict__).encode(), 0)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._writable = fd, writable
        return dead if writable and dead is not None and dead.pid != os.getpid() else None

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if self._writable:
                os.ftruncate(self._fd, 0)  # a clean release leaves no holder record behind
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def _busy_message(self, fd: int, timeout: float) -> str:
        holder = _read_holder(fd)
        who = holder.describe() if holder is not None else "another process (it has not said who yet)"
        waited = f"waited {timeout:g} s" if timeout > 0 else "did not wait (--lock-timeout 0)"
        return (
            f"{self.what} is locked by {who}; {waited}. Nothing was changed. "
            "Wait for it to finish, or re-run with --lock-timeout SECONDS to wait."
        )


def _read_holder(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        if not raw.strip():
            return None
        data = json.loads(raw)
        return Holder(int(data["pid"]), str(data["user"]), str(data["machine"]), str(data["since"]),
                      str(data.get("command", "")))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ApplyLocks:
    """The stack lock and one lock per host, as a context manager.

    `released` lists the holders of locks left behind by processes that died.
    """

    def __init__(self, stack: str, state_path: Path, hosts: dict[str, str], timeout: float = 0.0):
        self.timeout = max(0.0, timeout)
        self.locks = [FileLock(stack_lock_path(state_path), f"stack {stack!r}")]
        for name, uri in sorted(hosts.items(), key=lambda item: host_lock_path(item[1], stack).name):
            self.locks.append(FileLock(host_lock_path(uri, stack), f"host {name!r} ({uri}) for stack {stack!r}"))
        self.released: list[tuple[str, Holder]] = []

    def __enter__(self) -> ApplyLocks:
        deadline = time.monotonic() + self.timeout
        taken: list[FileLock] = []
        try:
            for lock in self.locks:
                dead = lock.acquire(deadline, self.timeout)
                taken.append(lock)
                if dead is not None:
                    self.released.append((lock.what, dead))
        except BaseException:
            for lock in reversed(taken):
                lock.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for lock in reversed(self.locks):
            lock.release()

    def notes(self) -> list[str]:
        """One line per lock released from a dead process."""
        return [
            f"released the lock on {what} left by {holder.describe()}, which is no longer running"
            for what, holder in self.released
        ]
