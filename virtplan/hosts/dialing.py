"""`libvirt.open` in the background, with nothing but the standard library and libvirt.

The command line starts connecting to a stack's hosts before it imports the rest of
virtplan (`virtplan.cli.early`), so this module stays as light as an import can be;
`virtplan.hosts.connection` puts the time limit and readable errors on top.
"""

from __future__ import annotations

import os
import sys
import threading
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the dial
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_quiet = threading.Lock()
_quieted = False


def quiet_libvirt() -> None:
    """Keep libvirt from printing to stderr: virtplan reports each failure itself, in one line.

    libvirt prints errors through its default error handler (replaced here) and some
    warnings through its log, e.g. three lines about a certificate that failed
    validation. Unless ``LIBVIRT_LOG_OUTPUTS`` or ``LIBVIRT_DEBUG`` says otherwise, the
    log goes to /dev/null; libvirt reads that setting once, when it is first imported,
    so this only takes effect in a process (like the CLI) that has not imported it yet.
    """
    global _quieted
    with _quiet:
        if not _quieted:
            if "libvirt" not in sys.modules and not {"LIBVIRT_LOG_OUTPUTS", "LIBVIRT_DEBUG"} & os.environ.keys():
                os.environ["LIBVIRT_LOG_OUTPUTS"] = "4:file:/dev/null"
            import libvirt

            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _quieted = True


class Dial:
    """``libvirt.open(uri)``, started in a daemon thread now. It cannot be cancelled: a
    connection that opens after `abandon` is closed as soon as it does. `then(conn)` is
    called in that thread as soon as the connection opens; what it returns is `ahead` (the
    reads started on it, see `virtplan.hosts.readahead`; `abandon` stops them, and closes the
    connection once they have)."""

    def __init__(self, uri: str, then: Callable[[Any], Any] | None = None):
        quiet_libvirt()
        self.uri = uri
        self.ahead: Any = None
        self._then = then
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._conn: Any = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, name=f"libvirt.open({uri})", daemon=True).start()

    def age(self) -> float:
        """Seconds since the attempt started."""
        return time.monotonic() - self._started

    def result(self, timeout: float) -> Any:
        """The connection, libvirt's error, or TimeoutError after `timeout` seconds (the
        attempt is then abandoned)."""
        self._done.wait(timeout)
        with self._lock:
            if self._conn is not None:
                return self._conn
            if self._error is not None:
                raise self._error
        self.abandon()
        raise TimeoutError(self.uri)

    def abandon(self) -> None:
        """Close the connection, now or once it opens; nobody will take it."""
        with self._lock:
            self._abandoned = True
            conn, self._conn = self._conn, None
            self.ahead = None
        if conn is not None:
            _close(conn)

    def _run(self) -> None:
        import libvirt

        try:
            conn = libvirt.open(self.uri)
        except BaseException as exc:  # handed over by result()
            self._error = exc
        else:
            ahead = self._start_then(conn)
            with self._lock:
                if not self._abandoned:
                    self._conn, self.ahead = conn, ahead
                    conn = None
            if conn is not None:
                _close(conn)
        finally:
            self._done.set()

    def _start_then(self, conn: Any) -> Any:
        if self._then is None:
            return None
        try:
            return self._then(conn)
        except Exception:  # nothing started: the reads are made later, and report their own errors
            return None


def _close(conn: Any) -> None:
    """Close a connection nobody took, once the reads started on it stopped."""
    from virtplan.hosts.readahead import close_connection

    close_connection(conn)
