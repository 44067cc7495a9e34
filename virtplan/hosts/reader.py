"""A local host's domains and volumes read by a child process, while this one imports
virtplan and runs the stack program.

Reads made by threads of this process share its interpreter lock with that Python work:
after each libvirt call a thread must take the lock back, and beside a busy main thread it
waits for it (1000 domains and their volumes: 0.18 s alone, 3.4 s beside a thread that
computes). A child forked at start-up, before this process has any other thread, has an
interpreter of its own and a connection of its own; it makes the reads of
`virtplan.hosts.fetch`, writes what they returned as plain values (`marshal`) into a
memory file and exits; this process reads the file in one call.

Only for hosts reached through a local socket of a libvirt daemon (`qemu:///system`,
`qemu+unix://...`): a second connection to them costs milliseconds, over ssh or TLS it
would cost a second handshake. Never for drivers whose state lives in the process
(`test:///default`): the child would read its own copy.
"""

from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import signal
import threading

from virtplan.hosts.dialing import quiet_libvirt
from virtplan.hosts.fetch import DomainListing, domain_xml_flags, list_domains, list_volumes, pool_active

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the reads start
if TYPE_CHECKING:
    from typing import Any

    from virtplan.hosts.fetch import Volumes

#: Drivers whose state a daemon keeps (each connection sees the same objects).
DAEMON_DRIVERS = frozenset({"qemu", "lxc"})


def readable_apart(uri: str) -> bool:
    """Whether `uri` can be read by a forked child now: a local daemon's socket, and no
    other thread in this process yet (forking a process that runs threads copies locks
    they may hold)."""
    scheme, sep, rest = uri.partition("://")
    driver, _, transport = scheme.partition("+")
    local = sep and not rest.split("/", 1)[0] and transport in ("", "unix")
    return bool(local) and driver in DAEMON_DRIVERS and hasattr(os, "fork") and threading.active_count() == 1


def fork_readers(hosts: dict[str, tuple[str, list[str]]], secure: bool) -> dict[str, ReaderProcess]:
    """A reader process for each host (name -> URI, pools) that `readable_apart` allows,
    all forked before any thread of this process starts. libvirt is imported first, once:
    this process needs it too, and a child that imported it again would spend the CPU the
    reads and this process's start-up compete for (libvirt starts no thread on import)."""
    apart = {name: (uri, pools) for name, (uri, pools) in hosts.items() if readable_apart(uri)}
    if apart:
        quiet_libvirt()
    readers = {name: ReaderProcess(uri, secure, pools) for name, (uri, pools) in apart.items()}
    for reader in readers.values():
        reader._start_collecting()
    return readers


class ReaderProcess:
    """A forked child reading a host's domains (their secure XML if `secure`, see
    `domain_xml_flags`) and the volumes of `pools` on its own connection to `uri`.
    `domains()` and `volumes(pool)` wait for what it sent; None where it failed (the caller
    reads for itself). `stop` ends it. Made by `fork_readers`."""

    def __init__(self, uri: str, secure: bool, pools: list[str]):
        self.secure, self.pools = secure, sorted(pools)
        self._done = threading.Event()
        self._reaping = threading.Lock()
        self._reaped = False  # once it is, its PID may be another process's: never signalled
        # (active UUIDs, autostart UUIDs, the listing's documents), or None; the volumes by pool
        self._result: tuple[tuple[list[str], list[str], list[Any]] | None, dict[str, Any]] = (None, {})
        read_end, write_end = os.pipe()
        # What the child read goes into a memory file, read here in one call once the
        # child has exited: through the pipe alone, each 64 KiB would wake a thread of this
        # process that must take the interpreter lock from a busy main thread.
        self._data = os.memfd_create("virtplan-reader") if hasattr(os, "memfd_create") else None
        self._pid = os.fork()
        if self._pid == 0:  # the child: never returns
            os.close(read_end)
            _child(write_end if self._data is None else self._data, uri, secure, pools)
        os.close(write_end)
        self._read_end = read_end
        atexit.register(self.stop)  # a command that ends first does not leave it reading

    def _start_collecting(self) -> None:
        """Collect what the child sends, even if nobody asks for it (so it never blocks)."""
        threading.Thread(target=self._collect, name="reader-process", daemon=True).start()

    @property
    def xml_flags(self) -> int:
        """How it reads domains' XML (libvirt's flags)."""
        return domain_xml_flags(self.secure)

    def domains(self) -> DomainListing | None:
        self._done.wait()
        listing = self._result[0]
        if listing is None:
            return None
        active, autostart, xmls = listing
        return DomainListing(set(active), set(autostart), xmls)

    def volumes(self, pool: str) -> Volumes | None:
        """The pool's volumes, None if they were not read (or the pool was not running)."""
        self._done.wait()
        return self._result[1].get(pool)

    def stop(self) -> None:
        """End the child now (its connection goes with it); what it did not send is None."""
        with self._reaping:
            if not self._reaped:
                with contextlib.suppress(OSError):
                    os.kill(self._pid, signal.SIGKILL)

    def _collect(self) -> None:
        chunks: list[bytes] = []
        try:
            while chunk := os.read(self._read_end, 1 << 20):  # until the child exits (with a memory file: nothing)
                chunks.append(chunk)
            if self._data is not None:
                chunks = [os.pread(self._data, os.fstat(self._data).st_size, 0)]
        except OSError:
            chunks = []
        finally:
            os.close(self._read_end)
            if self._data is not None:
                os.close(self._data)
            with self._reaping:
                with contextlib.suppress(OSError):  # (it has closed its end: it is exiting)
                    os.waitpid(self._pid, 0)
                self._reaped = True
        with contextlib.suppress(EOFError, ValueError, TypeError):  # nothing sent: it failed or was stopped
            self._result = marshal.loads(b"".join(chunks))
        self._done.set()


def _child(out: int, uri: str, secure: bool, pools: list[str]) -> None:
    """The child's work: read, write what it read to `out`, exit (without running this
    process's exit handlers or flushing buffers it inherited)."""
    try:
        import libvirt  # (imported by `fork_readers`, with its log silenced)

        conn = libvirt.open(uri)
        xml_flags = domain_xml_flags(secure)
        volumes: dict[str, Volumes | None] = {}
        # the pools' volumes alongside the domains, as the threads of `ReadAhead` do
        reading = threading.Thread(target=_read_pools, args=(conn, pools, volumes), daemon=True)
        reading.start()
        listing = list_domains(conn, xml_flags)
        reading.join()
        data = marshal.dumps(((sorted(listing.active), sorted(listing.autostart), listing.xmls), volumes))
        view = memoryview(data)
        while view:
            view = view[os.write(out, view) :]
    except BaseException:  # nothing sent: the parent reads for itself
        pass
    finally:
        os._exit(0)


def _read_pools(conn: Any, pools: list[str], into: dict[str, Volumes | None]) -> None:
    for name in pools:
        try:
            pool = conn.storagePoolLookupByName(name)
            into[name] = list_volumes(pool) if pool_active(pool) else None
        except Exception:  # not read here: the parent reads it
            into[name] = None
