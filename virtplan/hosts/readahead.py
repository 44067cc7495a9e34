"""A host's domains and volumes read ahead, while the process does other work.

A no-op plan of a thousand VMs spends most of its time waiting for libvirt to hand over
two thousand XML documents, and most of the rest in Python (imports, running the stack
program, comparing). Started as soon as a connection opens, the reads overlap with that
Python work instead of following it.

What is read ahead is exactly what `virtplan.hosts.observe` would read itself, on the
same connection, in this same process, a moment earlier; it is handed over once. If the
read ahead failed, or read other flags or pools than asked, observe reads for itself, so
the result never depends on it. A command that takes the stack's lock (apply) drops what
was read before it: another apply may have changed the hosts while it waited.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from virtplan.hosts.observe import DomainListing, _active, _inactive_xml, list_domains, list_volumes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from virtplan.hosts.ledger import HostLedger

T = TypeVar("T")


class ReadAhead:
    """Reads of one host's domains (XML with `xml_flags`), of the volumes of `pools` and of
    the stack's ledger (`ledger`: records pool, its path, stack key), each in a daemon thread
    from now on. `cancel` makes the remaining reads stop early."""

    def __init__(self, conn: Any, xml_flags: int, pools: list[str], ledger: tuple[str, str, str] | None = None):
        self._cancelled = threading.Event()
        self._flags = xml_flags
        fetch = self._unless_cancelled(xml_flags)
        self._domains: Future[DomainListing] | None = self._start(lambda: list_domains(conn, xml_flags, fetch))
        self._volumes = {name: self._start(functools.partial(self._pool, conn, name)) for name in pools}
        self._ledger_of = ledger
        self._ledger = self._start(functools.partial(_read_ledger, conn, *ledger)) if ledger is not None else None

    def domains(self, xml_flags: int) -> DomainListing | None:
        """The domains read ahead (once), or None: read them now."""
        future, self._domains = self._domains, None
        return _outcome(future) if future is not None and xml_flags == self._flags else None

    def volumes(self, pool: str) -> list[tuple[Any, str | None]] | None:
        """The volumes of `pool` read ahead (once), or None: read them now."""
        return _outcome(self._volumes.pop(pool, None))

    def ledger(self, pool: str, path: str, stack_key: str) -> HostLedger | None:
        """The stack's ledger, read (once; None if it was read for another pool or stack, or
        the read failed: open it now)."""
        future, self._ledger = self._ledger, None
        return _outcome(future) if future is not None and self._ledger_of == (pool, path, stack_key) else None

    def cancel(self) -> None:
        self._cancelled.set()

    def _pool(self, conn: Any, name: str) -> list[tuple[Any, str | None]] | None:
        pool = conn.storagePoolLookupByName(name)
        return list_volumes(pool, self._unless_cancelled(0)) if _active(pool) else None

    def _unless_cancelled(self, flags: int) -> Callable[[Any], str | None]:
        def fetch(obj: Any) -> str | None:
            if self._cancelled.is_set():
                raise _Cancelled
            return _inactive_xml(obj, flags)

        return fetch

    @staticmethod
    def _start(read: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()

        def run() -> None:
            try:
                future.set_result(read())
            except BaseException as exc:  # handed over as "not read ahead"
                future.set_exception(exc)

        # A daemon thread: a command that ends early (an invalid stack) never waits for it.
        threading.Thread(target=run, name="read-ahead", daemon=True).start()
        return future


def _read_ledger(conn: Any, pool: str, path: str, stack_key: str) -> HostLedger:
    from virtplan.hosts.ledger import HostLedger, store_for

    ledger = HostLedger(store_for(conn, pool, path), stack_key)
    ledger.records()  # read now
    return ledger


class _Cancelled(Exception):
    """The read ahead was not needed after all."""


def _outcome(future: Future[T] | None) -> T | None:
    if future is None:
        return None
    try:
        return future.result()
    except Exception:  # whatever went wrong, observe reads again and reports it itself
        return None
