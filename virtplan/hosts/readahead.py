"""A host's domains and volumes read ahead, while the process does other work.

A no-op plan of a thousand VMs spends most of its time waiting for libvirt to hand over
two thousand XML documents, and most of the rest in Python (imports, running the stack
program, comparing). Started as soon as a connection opens, the reads overlap with that
Python work instead of following it.

What is read ahead is exactly what `virtplan.hosts.observe` would read itself, a moment
earlier: on the same connection, or, for a local host read by a command that changes
nothing, by a child process on its own connection (`virtplan.hosts.reader`: away from
this process's interpreter lock; its documents arrive as observe goes through them, and
what it did not send is read on this connection); it is handed over once. If the
read ahead failed, or read other flags or pools than asked, observe reads for itself, so
the result never depends on it. A command that takes the stack's lock (apply) drops what
was read before it: another apply may have changed the hosts while it waited.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar  # imported by libvirt already

from virtplan.hosts.fetch import (
    GONE,
    DomainListing,
    again_if_lost,
    domain_xml_flags,
    inactive_xml,
    list_domains,
    list_volumes,
    pool_active,
    with_key,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from virtplan.hosts.fetch import Volumes
    from virtplan.hosts.ledger import HostLedger
    from virtplan.hosts.reader import ReaderProcess

T = TypeVar("T")
Ledger = tuple[str, str, str]  # records pool, its path, stack key


class ReadAhead:
    """Reads of one host's domains (XML with `xml_flags`), of the volumes of `pools` and of
    the stack's ledger (`ledger`: records pool, its path, stack key; or later, with
    `read_ledger`), each in a daemon thread from now on. `cancel` makes the remaining
    reads stop early. Imports nothing but threading and libvirt until the ledger is read."""

    def __init__(
        self,
        conn: Any,
        xml_flags: int,
        pools: list[str],
        ledger: Ledger | None = None,
        child: ReaderProcess | None = None,
    ):
        self.pools = sorted(pools)
        self._conn = conn
        self._cancelled = threading.Event()
        self._flags = xml_flags
        self._started: list[_Later[Any]] = []
        self._child = child
        if child is not None and (child.xml_flags, child.pools) != (xml_flags, self.pools):
            child.stop()  # reads something else
            self._child = None
        self._domains: _Later[DomainListing | None] | None
        self._volumes: dict[str, _Later[Volumes | None] | None]
        if self._child is not None:  # read by that process, handed over by these threads
            self._domains = self._start(functools.partial(self._child.domains, self._fill_domain))
            self._volumes = {
                name: self._start(functools.partial(self._child.volumes, name, self._fill_volume)) for name in pools
            }
        else:
            fetch = self._unless_cancelled(xml_flags)
            self._domains = self._start(lambda: list_domains(conn, xml_flags, fetch))
            self._volumes = {name: self._start(functools.partial(self._pool, conn, name)) for name in pools}
        self._ledger_of: Ledger | None = None
        self._ledger: _Later[HostLedger] | None = None
        if ledger is not None:
            self.read_ledger(ledger)

    def read_ledger(self, ledger: Ledger) -> None:
        """Start reading the stack's ledger (records pool, its path, stack key), unless one is."""
        if self._ledger_of is None:
            self._ledger_of = ledger
            self._ledger = self._start(functools.partial(self._read_ledger, *ledger))

    def domains(self, xml_flags: int) -> DomainListing | None:
        """The domains read ahead (once), or None: read them now."""
        later, self._domains = self._domains, None
        return later.outcome() if later is not None and xml_flags == self._flags else None

    def volumes(self, pool: str) -> Volumes | None:
        """The volumes of `pool` read ahead (once), or None: read them now."""
        later = self._volumes.pop(pool, None)
        return later.outcome() if later is not None else None

    def ledger(self, pool: str, path: str, stack_key: str) -> HostLedger | None:
        """The stack's ledger, read (once; None if it was read for another pool or stack, or
        the read failed: open it now)."""
        later, self._ledger = self._ledger, None
        return later.outcome() if later is not None and self._ledger_of == (pool, path, stack_key) else None

    def cancel(self) -> None:
        self._cancelled.set()
        if self._child is not None:
            self._child.stop()

    def _drop(self) -> None:
        """Forget what was read and not handed over (nothing runs any more): its libvirt
        objects keep their connection alive."""
        with _lock:
            self._domains, self._volumes, self._ledger, self._started = None, {}, None, []

    def _start(self, read: Callable[[], T]) -> _Later[T] | None:
        """`read` started in its thread, unless the connection is being closed (None)."""
        with _lock:
            if self._conn in _closed:
                return None
            _live.add(self)
            later = _Later(read)
            self._started.append(later)
            return later

    def _read_ledger(self, pool: str, path: str, stack_key: str) -> HostLedger:
        from virtplan.hosts.ledger import HostLedger, store_for

        ledger = HostLedger(store_for(self._conn, pool, path), stack_key)
        ledger.records()  # read now
        return ledger

    def _fill_domain(self, name: str, uuid: str) -> tuple[str | None, str | None]:
        """A domain the reader process did not send, read on this connection."""
        return with_key(_gone_or(lambda: inactive_xml(self._conn.lookupByUUIDString(uuid), self._flags)))

    def _fill_volume(self, pool: str, name: str) -> tuple[str | None, str | None]:
        """A volume the reader process did not send, read on this connection."""
        return with_key(
            _gone_or(lambda: inactive_xml(self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name), 0))
        )

    def _pool(self, conn: Any, name: str) -> Volumes | None:
        pool = conn.storagePoolLookupByName(name)
        return list_volumes(pool, self._unless_cancelled(0)) if pool_active(pool) else None

    def _unless_cancelled(self, flags: int) -> Callable[[Any], str | None]:
        def fetch(obj: Any) -> str | None:
            if self._cancelled.is_set():
                raise _Cancelled
            return inactive_xml(obj, flags)

        return fetch


def as_observed(conn: Any, pools: list[str], child: ReaderProcess | None = None) -> ReadAhead:
    """Reads made the way `virtplan.engine` observes a host (it always digests console
    passwords, so domains are read with their secure XML); by `child` if it reads that."""
    return ReadAhead(conn, domain_xml_flags(secure=True), pools, child=child)


_lock = threading.Lock()
#: Those that started reading. Weak: a read that runs holds its ReadAhead itself (each read
#: is one of its methods or closures), and one no longer referenced has nothing running.
_live: weakref.WeakSet[ReadAhead] = weakref.WeakSet()
_closed: weakref.WeakSet[Any] = weakref.WeakSet()  # connections closed or closing: no read starts


def close_connection(conn: Any, wait: float = 60.0) -> None:
    """Close `conn` once no read ahead runs on it: its reads are stopped and none starts any
    more. libvirt must not close a connection under a call in progress (it frees what the
    call uses), so this waits for the calls running (stopped reads make no further call),
    at most `wait` seconds; a connection still busy then is left open, to the process's end."""
    with _lock:
        _closed.add(conn)
        reads = [r for r in _live if r._conn is conn]
        running = [later for read in reads for later in read._started if not later.done()]
    for read in reads:
        read.cancel()
    deadline = time.monotonic() + wait
    if not all(later.wait(deadline - time.monotonic()) for later in running):
        return
    for read in reads:
        read._drop()
    _close(conn)


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # closing what nobody uses any more: nothing to report
        conn.close()


def _gone_or(read: Callable[[], str | None]) -> str | None:
    """read(), or None if what it looks up was deleted meanwhile."""
    import libvirt

    try:
        return again_if_lost(read)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in GONE:
            return None
        raise


class _Cancelled(Exception):
    """The read ahead was not needed after all."""


class _Later(Generic[T]):
    """`read()` run in a daemon thread from now on: a command that ends early (an invalid
    stack) never waits for it. (concurrent.futures would import logging before the reads start.)"""

    def __init__(self, read: Callable[[], T]):
        self._done = threading.Event()
        self._value: T | None = None
        self._failed = False
        threading.Thread(target=self._run, args=(read,), name="read-ahead", daemon=True).start()

    def _run(self, read: Callable[[], T]) -> None:
        try:
            self._value = read()
        except BaseException:  # handed over as "not read ahead": observe reads again and reports it
            self._failed = True
        finally:
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Whether the read finished, waiting at most `timeout` seconds."""
        return self._done.wait(max(0.0, timeout))

    def outcome(self) -> T | None:
        """What was read, once it is (handed over once: not kept, since the libvirt objects
        in it keep their connection alive); None if the read failed."""
        self._done.wait()
        value, self._value = self._value, None
        return None if self._failed else value
