"""The connections an apply runs one host's changes over: enough that its workers' calls
are served at once, not queued.

libvirtd serves at most `max_client_requests` calls of one client connection at a time
(5 by default); the others wait in its queue. Eight workers on one connection therefore
destroy five VMs at once, and a short call (a lookup, a list) waits behind five slow ones.
Measured on this 2-CPU host, 10 running VMs destroyed by 10 threads: over one connection
3.2-4.0 s, over two 1.2-1.6 s.

So a host with more workers than that gets one connection per CALLS_PER_CONNECTION
workers: the one the engine opened, plus extra ones opened in the background while the
first changes already run on it. Each change runs on the least busy connection open at
its start (its handles, streams and calls stay on that one); while all of them are full
and another is opening, a change waits for it rather than queue in libvirtd (measured:
one VM of ten took 2 s longer to destroy when six landed on one connection before the
second had opened). An extra connection that fails to open is simply not used. libvirt's
in-process test driver gets none (its state belongs to one connection).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator
from typing import Any

#: libvirtd's default `max_client_requests`: calls of one connection served at once.
CALLS_PER_CONNECTION = 5
#: Seconds between looks at the lanes while waiting for one (a timeout on a lost wake-up).
_RECHECK = 0.05


class Lanes:
    """The connections to one host during an apply: `conn` and, for more than
    CALLS_PER_CONNECTION `workers`, extra ones to `uri` (opened from now on)."""

    def __init__(self, conn: Any, uri: str, host: str, workers: int):
        self._lock = threading.Condition()
        self._open: list[Any] = [conn]
        self._busy: dict[int, int] = {id(conn): 0}
        self._extra: list[Any] = []
        self._closed = False
        self._opening = 0
        wanted = math.ceil(workers / CALLS_PER_CONNECTION) - 1
        if wanted > 0 and _shareable(conn):
            self._opening = wanted
            for _ in range(wanted):
                threading.Thread(target=self._add, args=(uri, host), name=f"lane-{host}", daemon=True).start()

    @contextlib.contextmanager
    def lane(self) -> Iterator[Any]:
        """The least busy connection, held for one change. While every open one already
        serves CALLS_PER_CONNECTION changes and another is still opening, wait for that one
        (or for a change to finish) rather than queue behind five slow calls."""
        with self._lock:
            while True:
                conn = min(self._open, key=lambda c: self._busy[id(c)])
                if self._busy[id(conn)] < CALLS_PER_CONNECTION or not self._opening:
                    break
                self._lock.wait(_RECHECK)
            self._busy[id(conn)] += 1
        try:
            yield conn
        finally:
            with self._lock:
                self._busy[id(conn)] -= 1
                self._lock.notify_all()

    def close(self) -> None:
        """Close the extra connections (those still opening are closed once they open)."""
        with self._lock:
            self._closed = True
            extra, self._extra = self._extra, []
        for conn in extra:
            with contextlib.suppress(Exception):
                conn.close()

    def _add(self, uri: str, host: str) -> None:
        from virtplan.hosts.connection import connect

        try:
            conn = connect(uri, host)
        except Exception:  # the engine's connection still serves every change
            conn = None
        with self._lock:
            self._opening -= 1
            self._lock.notify_all()
            if conn is None:
                return
            if not self._closed:
                self._open.append(conn)
                self._busy[id(conn)] = 0
                self._extra.append(conn)
                return
        with contextlib.suppress(Exception):
            conn.close()


def _shareable(conn: Any) -> bool:
    """Whether another connection to the same URI sees the same host (not the test driver)."""
    try:
        return str(conn.getType()).upper() != "TEST"
    except Exception:
        return False
