"""Connections to libvirt hosts: one readable line naming the host and URI when one fails.

Opening a connection is bounded in time. libvirt itself has no connect timeout: a TCP
connection to an address that drops packets (a host that is down behind a router, a
firewall that drops instead of refusing) or an ssh that waits for it takes minutes to
fail. :func:`connect` runs ``libvirt.open`` in a helper thread and gives up after
``timeout`` seconds (default: ``$VIRTPLAN_CONNECT_TIMEOUT``, else 30); a connection that
opens after that is closed as soon as it does.

libvirt's failure text is kept (it is what an operator searches for) but reduced to one
line: the remote transports pass on whatever ssh printed (several lines for a changed
host key) wrapped in "Cannot recv data: ...: Connection reset by peer". The line starts
with what went wrong in plain words (connection refused, host name not found,
authentication failed, host key verification failed, TLS certificate not trusted, ...).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from virtplan.errors import ConnectionFailed, ConnectionTimedOut
from virtplan.hosts.dialing import Dial, quiet_libvirt

if TYPE_CHECKING:
    from virtplan.hosts.readahead import ReadAhead

T = TypeVar("T")

TIMEOUT_ENV = "VIRTPLAN_CONNECT_TIMEOUT"
DEFAULT_TIMEOUT = 30.0


def connect_timeout() -> float:
    """Seconds to wait for a host to answer: $VIRTPLAN_CONNECT_TIMEOUT, else 30."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConnectionFailed(f"{TIMEOUT_ENV}={text!r}: write a number of seconds greater than 0")
    return value


def connect(uri: str, host: str = "", timeout: float | None = None, dial: Dial | None = None) -> Any:
    """Open a libvirt connection, or raise ConnectionFailed naming the host and URI.

    Waits at most ``timeout`` seconds (default :func:`connect_timeout`), counted from the
    start of `dial` if given (an attempt started earlier, see virtplan.cli.early).
    """
    limit = connect_timeout() if timeout is None else timeout
    quiet_libvirt()
    import libvirt

    label = f"host {host!r} at {uri}" if host else uri
    attempt = dial if dial is not None else Dial(uri)
    try:
        return attempt.result(max(0.0, limit - attempt.age()))
    except TimeoutError:
        raise ConnectionTimedOut(
            f"cannot connect to {label}: timed out: no answer within {limit:g} s "
            f"(host down or address unreachable? {TIMEOUT_ENV} sets the limit)"
        ) from None
    except libvirt.libvirtError as exc:
        raise ConnectionFailed(f"cannot connect to {label}: {explain(str(exc))}") from exc


class Opening:
    """Connections to a stack's hosts, opened in the background from now on, one daemon
    thread each, so that their handshakes (a few hundred milliseconds over ssh) overlap with
    what the caller does meanwhile, such as importing the planner or running the stack
    program. Once a host is connected, its domains and the volumes of the pools named for
    it start being read ahead (`virtplan.hosts.readahead`). `take` hands each connection
    over (raising its ConnectionFailed), `ahead` its reads; `close` closes those never
    taken and stops the reads not handed over."""

    def __init__(self, hosts: list[tuple[str, str]] | None = None, pools: dict[str, list[str]] | None = None):
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, Outcome[Any]]] = {}
        self._ahead: dict[str, Outcome[ReadAhead]] = {}
        self.add(hosts or [], pools or {})

    def add(
        self,
        hosts: list[tuple[str, str]],
        pools: dict[str, list[str]],
        dials: dict[str, Dial] | None = None,
        ledgers: dict[str, tuple[str, str, str]] | None = None,
    ) -> None:
        """Start opening (name, URI) hosts not opening yet; `pools`: host -> pools to read;
        `dials`: host -> an attempt to open its URI already under way (see virtplan.cli.early);
        `ledgers`: host -> (records pool, its path, stack key) of the ledger to read."""
        ledgers = ledgers or {}
        dials = dict(dials or {})
        for name, uri in hosts:
            with self._lock:
                if name in self._pending and self._pending[name][0] == uri:
                    continue
                stale = self._pending.pop(name, None)
            if stale is not None:  # opened for the URI the host had before: not this one
                self._stop(name)
                stale[1].add_done_callback(_close_result)
            with self._lock:
                opened: Outcome[Any] = Outcome()
                ahead: Outcome[ReadAhead] = Outcome()
                self._pending[name], self._ahead[name] = (uri, opened), ahead
            dial = dials.pop(name, None)
            if dial is not None and dial.uri != uri:
                dial.abandon()
                dial = None
            threading.Thread(
                target=_open_and_read,
                args=(name, uri, pools.get(name, []), opened, ahead, dial, ledgers.get(name)),
                name="connect",
                daemon=True,
            ).start()
        for dial in dials.values():  # hosts the stack no longer has
            dial.abandon()

    def uris(self) -> dict[str, str]:
        """Host name -> URI of the connections not taken yet."""
        with self._lock:
            return {name: uri for name, (uri, _) in self._pending.items()}

    def take(self, name: str, uri: str) -> Any | None:
        """The connection opened for host `name` (None if none was, or for another URI, or
        if opening it failed other than by timing out: the caller tries once more, as the
        attempt may have been made before the command even read its stack)."""
        with self._lock:
            item = self._pending.pop(name, None)
        if item is None:
            return None
        opened_uri, future = item
        if opened_uri != uri:
            self._stop(name)
            future.add_done_callback(_close_result)
            return None
        failure = future.exception()
        if failure is not None and not isinstance(failure, ConnectionTimedOut):
            return None
        return future.result()

    def ahead(self, name: str) -> ReadAhead | None:
        """What is being read ahead on host `name`'s connection (once; None if nothing)."""
        with self._lock:
            future = self._ahead.pop(name, None)
        if future is None or future.exception() is not None:
            return None
        return future.result()

    def drop_reads(self) -> None:
        """Stop the reads ahead and hand none of them over: from now on, a host must be read
        afresh (e.g. once its lock is held)."""
        with self._lock:
            names = list(self._ahead)
        for name in names:
            self._stop(name)

    def close(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        self.drop_reads()
        for _, future in pending.values():
            future.add_done_callback(_close_result)

    def _stop(self, name: str) -> None:
        with self._lock:
            future = self._ahead.pop(name, None)
        if future is not None:
            future.add_done_callback(_cancel_reads)


class Outcome(Generic[T]):
    """A value or an exception, set once by one thread, waited for by others: the part of
    `concurrent.futures.Future` used here (importing that module imports `logging`, a few
    milliseconds of every command's start-up). A callback that raises is ignored, as
    Future ignores it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Outcome[T]], object]] = []

    def set_result(self, value: T) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value: T | None, error: BaseException | None) -> None:
        with self._lock:
            self._value, self._error = value, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._call(callback)

    def exception(self) -> BaseException | None:
        """The exception it was given (None if a value), once it is set."""
        self._done.wait()
        return self._error

    def result(self) -> T:
        """The value, once it is set (its exception is raised)."""
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def add_done_callback(self, callback: Callable[[Outcome[T]], object]) -> None:
        """Call `callback(self)` once it is set (now, if it is)."""
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        self._call(callback)

    def _call(self, callback: Callable[[Outcome[T]], object]) -> None:
        with contextlib.suppress(Exception):
            callback(self)


def _cancel_reads(future: Outcome[ReadAhead]) -> None:
    if future.exception() is None:
        future.result().cancel()


def _open_and_read(
    name: str,
    uri: str,
    pools: list[str],
    opened: Outcome[Any],
    ahead: Outcome[ReadAhead],
    dial: Dial | None = None,
    ledger: tuple[str, str, str] | None = None,
) -> None:
    try:
        conn = connect(uri, name, dial=dial)
    except BaseException as exc:  # handed over by Opening.take
        opened.set_exception(exc)
        ahead.set_exception(exc)
        return
    opened.set_result(conn)
    try:
        read = _reads_on(conn, dial, pools)
        if ledger is not None:
            read.read_ledger(ledger)
        ahead.set_result(read)
    except BaseException as exc:  # nothing read ahead: observe reads for itself
        ahead.set_exception(exc)


def _reads_on(conn: Any, dial: Dial | None, pools: list[str]) -> ReadAhead:
    """The reads the dial started as soon as it connected, if they are of these pools;
    otherwise new ones (theirs are stopped)."""
    from virtplan.hosts.readahead import ReadAhead, as_observed

    started = dial.ahead if dial is not None else None
    if isinstance(started, ReadAhead) and started.pools == sorted(pools):
        return started
    if started is not None:
        started.cancel()
    return as_observed(conn, pools)


def _close_result(future: Any) -> None:
    if future.exception() is None:
        from virtplan.hosts.readahead import close_connection

        close_connection(future.result())


#: (pattern in libvirt's or ssh's text, what went wrong in plain words); first match wins.
#: Compiled when a connection fails (re's cache), not by every command at start-up.
_CAUSES = (
    (
        (r"Host key verification failed|REMOTE HOST IDENTIFICATION HAS CHANGED", re.IGNORECASE),
        "ssh host key verification failed",
    ),
    ((r"Permission denied \(|Too many authentication failures", 0), "ssh authentication failed"),
    (
        (
            r"Could not resolve hostname|Unable to resolve address|Name or service not known|"
            r"Temporary failure in name resolution|No address associated with hostname",
            0,
        ),
        "host name not found",
    ),
    ((r"Connection refused", 0), "connection refused"),
    ((r"No route to host|Network is unreachable|Host is unreachable", 0), "host unreachable"),
    ((r"timed out", re.IGNORECASE), "timed out"),
    ((r"Failed to verify peer's certificate|certificate .*not trusted", 0), "TLS certificate not trusted"),
    (
        (r"Our own certificate|Cannot read (CA )?certificate|Cannot read private key", 0),
        "TLS client certificate problem",
    ),
    ((r"[Cc]ertificate", 0), "TLS failed"),
    ((r"authentication failed|Authentication failed", 0), "authentication failed"),
    ((r"Cannot recv data|Connection reset by peer|End of file while reading", 0), "connection closed"),
)

#: The parts of ssh's changed-host-key warning that say nothing beyond its last lines.
_SSH_NOISE = (  # a pattern, compiled on use
    r"^(@+|@.*@|IT IS POSSIBLE THAT SOMEONE.*|Someone could be eavesdropping.*|It is also possible that a host key.*|"
    r"Please contact your system administrator\.|Add correct host key in .*|remove with:|ssh-keygen -f .*)$"
)


def explain(message: str) -> str:
    """libvirt's failure text as one line, led by what went wrong in plain words."""
    detail = _one_line(message)
    for (pattern, flags), cause in _CAUSES:
        if re.search(pattern, message, flags):
            return f"{cause}: {detail}"
    return detail


def _one_line(message: str) -> str:
    """Join the meaningful lines; drop ssh's banner and the transport's wrapping."""
    text = message.strip()
    tunnelled = text.startswith("Cannot recv data: ")
    if tunnelled:  # what ssh (or the remote command) printed, then the socket error
        text = text.removeprefix("Cannot recv data: ")
        text = re.sub(r":\s*Connection reset by peer$", "", text)
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    kept = [line for line in lines if line and not re.match(_SSH_NOISE, line)]
    return " ".join(kept) or message.strip()
