"""A local host's domains and volumes read by a child process, while this one imports
virtplan and runs the stack program.

Reads made by threads of this process share its interpreter lock with that Python work:
after each libvirt call a thread must take the lock back, and beside a busy main thread it
waits for it (1000 domains and their volumes: 0.18 s alone, 3.4 s beside a thread that
computes). A child forked at start-up, before this process has any other thread, has an
interpreter of its own and a connection of its own; it makes the reads of
`virtplan.hosts.fetch` and sends what they return as plain values (`marshal`), a run of
documents at a time, as soon as they are read: this process takes them in when it asks
for them (no thread of its own), so observe works through the first documents while the
last are still being read. What the child did not send (it failed or was stopped) this
process reads for itself (`Fill`).

Only for hosts reached through a local socket of a libvirt daemon (`qemu:///system`,
`qemu+unix://...`): a second connection to them costs milliseconds, over ssh or TLS it
would cost a second handshake. Never for drivers whose state lives in the process
(`test:///default`): the child would read its own copy.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import marshal
import os
import signal
import threading

from virtplan.hosts.dialing import quiet_libvirt
from virtplan.hosts.fetch import DomainListing, documents, domain_lists, domain_xml_flags, pool_active, pool_volumes

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the reads start
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from virtplan.hosts.fetch import Volumes

    #: Reads one object the child did not send: (name, UUID) of a domain, or (pool, volume
    #: name), to (XML or None if it is gone, its `keyed` key).
    Fill = Callable[[str, str], tuple[str | None, str | None]]

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
    return {name: ReaderProcess(uri, secure, pools) for name, (uri, pools) in apart.items()}


#: What the child sends, in this order per stream (None: the domains; a pool's name: its volumes):
#: ("head", None, [(name, UUID), ...], active UUIDs, autostart UUIDs)  the domains listed
#: ("head", pool, [(volume name,), ...] or None if the pool is not running)
#: ("part", stream, start, [(XML, key), ...])  the documents of the objects from `start` on
_HEAD, _PART = "head", "part"
_LENGTH = 8  # bytes of each length written to the pipe


class ReaderProcess:
    """A forked child reading a host's domains (their secure XML if `secure`, see
    `domain_xml_flags`) and the volumes of `pools` on its own connection to `uri`.
    `domains(fill)` and `volumes(pool, fill)` hand over what it lists, with documents
    that arrive as they are iterated; None for what it did not list (the caller reads
    for itself). `stop` ends it. Made by `fork_readers`.

    The child writes each message to a memory file and then its length to a pipe; this
    process reads them whenever one of its threads needs the next (one thread at a time)."""

    def __init__(self, uri: str, secure: bool, pools: list[str]):
        self.secure, self.pools = secure, sorted(pools)
        self._state = threading.Condition()
        self._receiving = False  # a thread is reading the pipe (the others wait on `_state`)
        self._ended = False  # the child exited: nothing more will come
        self._heads: dict[str | None, tuple[Any, ...]] = {}
        self._parts: dict[str | None, dict[int, list[Any]]] = {}
        self._offset = 0  # where the next message starts in the memory file
        self._reaping = threading.Lock()
        self._reaped = False  # once it is, its PID may be another process's: never signalled
        read_end, write_end = os.pipe()
        self._data = os.memfd_create("virtplan-reader")
        self._pid = os.fork()
        if self._pid == 0:  # the child: never returns
            os.close(read_end)
            _child(write_end, self._data, uri, secure, pools)
        os.close(write_end)
        self._read_end = read_end
        atexit.register(self.stop)  # a command that ends first does not leave it reading

    @property
    def xml_flags(self) -> int:
        """How it reads domains' XML (libvirt's flags)."""
        return domain_xml_flags(self.secure)

    def domains(self, fill: Fill) -> DomainListing | None:
        """The host's domains, their XML arriving as they are iterated (`fill(name, UUID)`
        reads one the child did not send); None if the child did not list them."""
        head = self._head(None)
        if head is None:
            return None
        names, active, autostart = head
        return DomainListing(set(active), set(autostart), self._stream(None, [tuple(n) for n in names], fill))

    def volumes(self, pool: str, fill: Fill) -> Volumes | None:
        """The pool's volumes, their XML arriving as they are iterated (`fill(pool, name)`
        reads one the child did not send); None if they were not listed (or the pool was
        not running)."""
        head = self._head(pool)
        if head is None or head[0] is None:
            return None
        return self._stream(pool, [tuple(n) for n in head[0]], lambda name: fill(pool, name))

    def stop(self) -> None:
        """End the child now (its connection goes with it) and reap it. What it did not
        send is read by whoever iterates it (`fill`); what it had not listed is None."""
        with self._reaping:
            if not self._reaped:
                with contextlib.suppress(OSError):
                    os.kill(self._pid, signal.SIGKILL)
        self._reap()
        with self._state:
            if not self._receiving:  # (a thread reading the pipe finds it closed, and closes it)
                self._close()

    def _head(self, stream: str | None) -> tuple[Any, ...] | None:
        self._until(lambda: stream in self._heads)
        return self._heads.get(stream)

    def _stream(self, stream: str | None, keys: list[tuple[str, ...]], fill: Callable[..., Any]) -> Iterator[Any]:
        """(*key, XML, its `keyed` key) for each of `keys`, in order, as the child sends
        them; `fill(*key)` reads one it did not send."""
        parts = self._parts.setdefault(stream, {})
        at = 0
        while at < len(keys):
            self._until(functools.partial(parts.__contains__, at))
            with self._state:
                part = parts.pop(at, None)
            if part is None:  # the child ended without sending it
                yield (*keys[at], *fill(*keys[at]))
                at += 1
                continue
            for key, found in zip(keys[at : at + len(part)], part, strict=True):
                yield (*key, *found)
            at += len(part)

    def _until(self, ready: Callable[[], bool]) -> None:
        """Take in what the child sends until `ready()`, or until it has exited."""
        with self._state:
            while not ready() and not self._ended:
                if self._receiving:  # another thread reads: wait for what it takes in
                    self._state.wait()
                    continue
                self._receiving = True
                self._state.release()
                try:
                    messages = self._receive()
                finally:
                    self._state.acquire()
                    self._receiving = False
                if messages is None:  # the child has exited
                    self._reap()
                    self._close()
                for message in messages or ():
                    if message[0] == _HEAD:
                        self._heads[message[1]] = message[2:]
                    else:
                        _, stream, start, found = message
                        self._parts.setdefault(stream, {})[start] = found
                self._state.notify_all()

    def _receive(self) -> list[tuple[Any, ...]] | None:
        """The next messages (waiting for at least one); None once the child has exited.
        Each length is one write of 8 bytes, under the pipe's atomic size: a read of a
        multiple of 8 bytes holds whole lengths only."""
        try:
            lengths = os.read(self._read_end, _LENGTH * 512)
        except OSError:
            lengths = b""
        if not lengths:
            return None
        messages = []
        for i in range(0, len(lengths), _LENGTH):
            size = int.from_bytes(lengths[i : i + _LENGTH], "little")
            messages.append(marshal.loads(os.pread(self._data, size, self._offset)))
            self._offset += size
        return messages

    def _reap(self) -> None:
        with self._reaping:
            if not self._reaped:
                with contextlib.suppress(OSError):
                    os.waitpid(self._pid, 0)
                self._reaped = True

    def _close(self) -> None:
        """Nothing more will be taken in (under `_state`, with no thread reading the pipe)."""
        if not self._ended:
            self._ended = True
            for fd in (self._read_end, self._data):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._state.notify_all()


class _Sender:
    """The child's end: each message into the memory file, then its length into the pipe
    (from any of its threads)."""

    def __init__(self, pipe: int, data: int):
        self._pipe, self._data = pipe, data
        self._lock = threading.Lock()

    def __call__(self, *message: Any) -> None:
        blob = marshal.dumps(message)
        with self._lock:
            view = memoryview(blob)
            while view:
                view = view[os.write(self._data, view) :]
            os.write(self._pipe, len(blob).to_bytes(_LENGTH, "little"))


def _child(pipe: int, data: int, uri: str, secure: bool, pools: list[str]) -> None:
    """The child's work: read, sending as it goes, then exit (without running this
    process's exit handlers or flushing buffers it inherited)."""
    try:
        import libvirt  # (imported by `fork_readers`, with its log silenced)

        conn = libvirt.open(uri)
        send = _Sender(pipe, data)
        # the pools' volumes alongside the domains, as the threads of `ReadAhead` do
        reading = threading.Thread(target=_read_pools, args=(conn, pools, send), daemon=True)
        reading.start()
        active, autostart, domains = domain_lists(conn)
        send(_HEAD, None, [(d.name(), d.UUIDString()) for d in domains], sorted(active), sorted(autostart))
        documents(domains, domain_xml_flags(secure), done=functools.partial(send, _PART, None))
        reading.join()
    except BaseException:  # what was not sent, the parent reads for itself
        pass
    finally:
        os._exit(0)


def _read_pools(conn: Any, pools: list[str], send: _Sender) -> None:
    for name in pools:
        try:
            pool = conn.storagePoolLookupByName(name)
            if not pool_active(pool):
                send(_HEAD, name, None)
                continue
            volumes = pool_volumes(pool)
        except Exception:  # not listed here: the parent reads it
            send(_HEAD, name, None)
            continue
        send(_HEAD, name, [(v.name(),) for v in volumes])
        with contextlib.suppress(Exception):  # what was not sent, the parent reads
            documents(volumes, 0, done=functools.partial(send, _PART, name))
