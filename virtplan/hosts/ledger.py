"""A stack's records, kept on the libvirt host itself: its ledger.

libvirt lets virtplan mark domains and networks as its own (their `<metadata>`), but not
storage pools, volumes or snapshots; and drift needs to know what virtplan last applied.
That knowledge must live where every operator and CI runner finds it: on the host. So
each host has one small `dir` storage pool for virtplan (`virtplan`, at
`/var/lib/libvirt/virtplan` unless the Host says otherwise) and each stack keeps its
ledger there, as volumes written and read with libvirt's stream API (so it works the
same over `qemu+ssh://` and `qemu+tls://`):

- A ledger is a set of segments, one volume each, named
  `<stack file key>.<seq>.<nonce>.<base|delta>.json`: a *base* holds every record and
  names the segments it folded in; a *delta* the records one write set or dropped. The
  records are the newest complete base, then every complete delta it did not fold in, in
  order. Names are never reused (the nonce), so nothing a base folded can come back.
- A write creates a new segment. A write counts once its upload finished; a segment that
  does not parse (or whose checksum does not match) is a write in progress or one that
  died, and does not count (yet).
- Only the holder of the stack's lock on the host compacts (`virtplan.hosts.locks`): it
  writes a new base, then deletes what that base folded in, never a segment it could not
  read. Readers that raced with it read again; a delta whose upload finished after the
  base counts on top of it.

Reading a ledger costs a few libvirt calls (list the pool's volume names, download the
base and the deltas written since), whatever the number of records: O(stacks), not
O(volumes). libvirt's in-process test driver (`test:///default`) has no volume streams;
there the ledger lives in the connection's memory, as the driver's objects do.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from virtplan.errors import VirtplanError
from virtplan.hosts import segment_memo
from virtplan.hosts.fetch import fetch_all

FORMAT = "virtplan-ledger"
FORMAT_VERSION = 1
DEFAULT_POOL = "virtplan"
DEFAULT_PATH = "/var/lib/libvirt/virtplan"
#: A writer holding the stack's lock compacts once this many deltas follow the base.
COMPACT_AFTER = 64
#: An incomplete segment older than this (host clock, seconds) is a write that died.
STALE_WRITE = 600.0
_SEGMENT = re.compile(r"^(?P<key>.+)\.(?P<seq>\d{12})\.(?P<nonce>[0-9a-f]{8})\.(?P<type>base|delta)\.json$")
_WRITE_ATTEMPTS = 20

Record = dict[str, Any]


class LedgerError(VirtplanError):
    """The ledger on a host cannot be read or written."""


def file_key(stack_key: str) -> str:
    """The stack key as a file name part: "project/name" -> "project~name" (names never hold '~')."""
    return stack_key.replace("/", "~")


def stack_key_of(file_part: str) -> str:
    return file_part.replace("~", "/")


@dataclass(frozen=True)
class Segment:
    """One segment of a ledger, as its volume name tells (`segment_name`)."""

    key: str  # the stack's file key
    seq: int
    type: str  # base | delta
    name: str


def parse_name(name: str) -> Segment | None:
    match = _SEGMENT.match(name)
    if match is None:
        return None
    return Segment(match["key"], int(match["seq"]), match["type"], name)


def segment_name(key: str, seq: int, type_: str) -> str:
    return f"{key}.{seq:012d}.{os.urandom(4).hex()}.{type_}.json"


# -- where segments live ----------------------------------------------------------------
class _Store(abc.ABC):
    """Named blobs on one host: create-if-absent, read, delete, list."""

    #: Whether it talks to libvirt over a connection (that `reconnect` can replace).
    uses_connection = False

    def reconnect(self, conn: Any) -> None:  # noqa: B027  (a store without a connection ignores it)
        """Go on over `conn`, another connection to the same host."""

    @abc.abstractmethod
    def names(self) -> list[str]:
        """The blobs' names."""

    @abc.abstractmethod
    def read(self, name: str) -> bytes | None:
        """A blob's bytes; None if there is none."""

    @abc.abstractmethod
    def create(self, name: str, data: bytes) -> bool:
        """Write a new blob; False if one of that name exists already."""

    @abc.abstractmethod
    def delete(self, name: str) -> None:
        """Remove a blob (none is fine)."""

    @abc.abstractmethod
    def mtime(self, name: str) -> float | None:
        """When a blob was written; None if there is none."""


class _PoolStore(_Store):
    """Segments as volumes of the host's virtplan `dir` pool, moved with volume streams."""

    uses_connection = True

    def __init__(self, conn: Any, pool_name: str, pool_path: str):
        self.conn, self.pool_name, self.pool_path = conn, pool_name, pool_path
        self._pool: Any = None

    def reconnect(self, conn: Any) -> None:
        self.conn, self._pool = conn, None

    def pool(self, create: bool) -> Any:
        """The ledger pool, active; None when it does not exist and `create` is False."""
        import libvirt

        if self._pool is not None:
            return self._pool
        try:
            pool = self.conn.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            if not create:
                return None
            pool = self._define()
        self._check(pool)
        if not pool.isActive():
            # virtplan's own pool (autostart), just defined by another process or stopped by
            # hand: starting it changes none of the stack's objects, and its records are needed
            with contextlib.suppress(libvirt.libvirtError):
                pool.build(0)
            try:
                pool.create(0)
            except libvirt.libvirtError:
                if not pool.isActive():  # else another process started it meanwhile
                    raise
        self._pool = pool
        return pool

    def _define(self) -> Any:
        import libvirt

        from virtplan.documents.fragments import records_pool

        try:
            pool = self.conn.storagePoolDefineXML(records_pool(self.pool_name, self.pool_path), 0)
        except libvirt.libvirtError:
            # another process defined it meanwhile; anything else shows up on the lookup
            return self.conn.storagePoolLookupByName(self.pool_name)
        with contextlib.suppress(libvirt.libvirtError):
            pool.build(0)  # creates the directory if missing
        with contextlib.suppress(libvirt.libvirtError):
            pool.setAutostart(1)
        return pool

    def _check(self, pool: Any) -> None:
        import xml.etree.ElementTree as ET

        root = ET.fromstring(pool.XMLDesc(0))
        path = (root.findtext("target/path") or "").rstrip("/")
        if root.get("type") != "dir" or path != self.pool_path.rstrip("/"):
            raise LedgerError(
                f"a storage pool named {self.pool_name!r} exists on this host but is not virtplan's records "
                f"pool (type {root.get('type')!r} at {path!r}; virtplan expects a dir pool at {self.pool_path!r}); "
                "give the host another records pool with Host(records_pool=..., records_path=...)"
            )

    def names(self) -> list[str]:
        pool = self.pool(create=False)
        return [] if pool is None else [str(n) for n in pool.listVolumes()]

    def read(self, name: str) -> bytes | None:
        import libvirt

        pool = self.pool(create=False)
        if pool is None:
            return None
        try:
            vol = pool.storageVolLookupByName(name)
            stream = self.conn.newStream(0)
            vol.download(stream, 0, 0, 0)
            chunks: list[bytes] = []
            stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
            stream.finish()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
                return b""  # still being created ("still being allocated"): not written yet
            raise
        return b"".join(chunks)

    def create(self, name: str, data: bytes) -> bool:
        import libvirt

        from virtplan.documents.fragments import volume

        pool = self.pool(create=True)
        try:
            vol = pool.createXML(volume(name, 0, "raw"), 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_STORAGE_VOL_EXIST:
                return False
            raise
        stream = self.conn.newStream(0)
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += stream.send(bytes(view[offset : offset + 1024 * 1024]))
        stream.finish()
        # A write counts once every reader sees it: the next write of this process must
        # never be seen before this one (libvirt may finish the upload before the bytes are
        # readable).
        deadline = time.monotonic() + 10
        while self.read(name) != data:
            if time.monotonic() > deadline:
                raise LedgerError(f"wrote {name} in virtplan's records pool, but it does not read back")
            time.sleep(0.01)
        return True

    def delete(self, name: str) -> None:
        import libvirt

        pool = self.pool(create=False)
        if pool is None:
            return
        try:
            pool.storageVolLookupByName(name).delete(0)
        except libvirt.libvirtError as exc:
            # gone already, or still being created (a later compaction deletes it)
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_OPERATION_INVALID):
                raise

    def mtime(self, name: str) -> float | None:
        import xml.etree.ElementTree as ET

        import libvirt

        pool = self.pool(create=False)
        if pool is None:
            return None
        try:
            root = ET.fromstring(pool.storageVolLookupByName(name).XMLDesc(0))
        except libvirt.libvirtError:
            return None
        text = root.findtext("target/timestamps/mtime")
        return float(text) if text else None


class _MemoryStore(_Store):
    """Segments in this process, for libvirt's in-process test driver (no volume streams),
    whose objects also live only in this process (shared by its connections to one URI)."""

    _by_uri: dict[str, dict[str, bytes]] = {}
    _lock = threading.Lock()

    def __init__(self, conn: Any):
        with self._lock:
            self.blobs = self._by_uri.setdefault(str(conn.getURI()), {})

    def names(self) -> list[str]:
        with self._lock:
            return list(self.blobs)

    def read(self, name: str) -> bytes | None:
        with self._lock:
            return self.blobs.get(name)

    def create(self, name: str, data: bytes) -> bool:
        with self._lock:
            if name in self.blobs:
                return False
            self.blobs[name] = data
            return True

    def delete(self, name: str) -> None:
        with self._lock:
            self.blobs.pop(name, None)

    def mtime(self, name: str) -> float | None:
        return None


def store_for(conn: Any, pool_name: str = DEFAULT_POOL, pool_path: str = DEFAULT_PATH) -> _Store:
    """Where ledgers live on the host behind `conn`."""
    if conn.getType().lower() == "test":
        return _MemoryStore(conn)
    return _PoolStore(conn, pool_name, pool_path)


# -- one stack's ledger -------------------------------------------------------------------
def _checksum(doc: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in doc.items() if k != "sha256"}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _writer() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry for this uid
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


class HostLedger:
    """One stack's records on one host: read once, then kept in step with every write.

    Thread-safe. Writes are durable on the host when the call returns. Writes that
    threads of this process make at the same time are written together, in one segment
    (see `update`)."""

    def __init__(self, store: _Store, stack_key: str):
        self.store, self.stack_key, self.key = store, stack_key, file_key(stack_key)
        self._lock = threading.RLock()
        self._queue: list[_Write] = []  # updates waiting for the next segment (guarded by _queue_lock)
        self._queue_lock = threading.Lock()
        self._records: dict[str, Record] | None = None
        self._segments: list[Segment] = []
        self._neighbours: set[str] = set()
        #: The bytes of complete segments this process wrote or read, by name: a segment never
        #: changes once complete and its name is never reused, so each is downloaded once.
        self._known: dict[str, bytes] = {}

    # reading
    def records(self) -> dict[str, Record]:
        """Every record by address (a copy of each record)."""
        with self._lock:
            return {a: dict(r) for a, r in self._load().items()}

    def view(self) -> dict[str, Record]:
        """Every record by address, as they are now and not copied: to read, never to change
        (copying each record of a thousand VMs costs milliseconds every time)."""
        with self._lock:
            return dict(self._load())

    def get(self, address: str) -> Record | None:
        with self._lock:
            record = self._load().get(address)
            return dict(record) if record is not None else None

    def reload(self) -> None:
        with self._lock:
            self._records = None

    def _load(self) -> dict[str, Record]:
        if self._records is None:
            self._records, self._segments = self._read()
        return self._records

    def neighbours(self) -> set[str]:
        """The keys of the other stacks with a ledger on this host (as of the last read)."""
        with self._lock:
            self._load()
            return set(self._neighbours)

    def _read(self) -> tuple[dict[str, Record], list[Segment]]:
        for _ in range(_WRITE_ATTEMPTS):
            names = self.store.names()
            self._neighbours = {stack_key_of(s.key) for s in map(parse_name, names) if s is not None} - {self.stack_key}
            segments = self._mine(names)
            try:
                return self._replay(segments), segments
            except _Vanished:
                continue  # compacted while we read: read again
        raise LedgerError(f"the ledger of stack {self.stack_key!r} kept changing while it was read; try again")

    def _mine(self, names: Iterable[str]) -> list[Segment]:
        found = [s for s in map(parse_name, names) if s is not None and s.key == self.key]
        return sorted(found, key=lambda s: (s.seq, s.name))

    def _replay(self, segments: list[Segment]) -> dict[str, Record]:
        return self._fold(segments)[0]

    def _fold(self, segments: list[Segment]) -> tuple[dict[str, Record], set[str], list[Segment]]:
        """The records the segments hold: the newest complete base, then every complete
        delta it did not fold in, in order. Also returns the names folded in (superseded
        bases included) and the segments that are not complete."""
        unknown = [s.name for s in segments if s.name not in self._known]
        fetched = dict(zip(unknown, fetch_all(unknown, self.store.read), strict=True))  # at once, not one by one
        records: dict[str, Record] = {}
        folded: set[str] = set()
        incomplete: list[Segment] = []
        start = None
        for base in reversed([s for s in segments if s.type == "base"]):  # the newest complete base
            doc = self._doc(base, fetched)
            if doc is not None:
                records = doc["records"]  # (each document is parsed afresh for this read: ours to change)
                folded = {*doc.get("folded", []), base.name}
                start = base
                break
            incomplete.append(base)  # being written (nothing it folds is deleted before it is complete)
        for seg in segments:
            if seg.name in folded or seg in incomplete:
                continue
            if seg.type == "base":
                if start is not None and (seg.seq, seg.name) < (start.seq, start.name):
                    folded.add(seg.name)  # an older base: superseded
                continue
            doc = self._doc(seg, fetched)
            if doc is None:
                incomplete.append(seg)  # a write in progress, or one that died
                continue
            for address in doc.get("drop", []):
                records.pop(address, None)
            for address, fields in doc.get("set", {}).items():
                if address in records:
                    records[address].update(fields)
                else:
                    records[address] = fields
            folded.add(seg.name)
        return records, folded, incomplete

    def _doc(self, seg: Segment, fetched: dict[str, bytes | None]) -> dict[str, Any] | None:
        """The segment's document; None if it is not complete (yet)."""
        data = self._known[seg.name] if seg.name in self._known else fetched.get(seg.name)
        if data is None:
            raise _Vanished(seg.name)
        doc = segment_memo.load(data)  # these very bytes, parsed and checksummed before
        remembered = doc is not None
        if doc is None:
            try:
                doc = json.loads(data)
            except ValueError:
                return None
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or doc.get("stack") != self.stack_key
            or (not remembered and doc.get("sha256") != _checksum(doc))
        ):
            return None
        if doc.get("version") != FORMAT_VERSION:
            raise LedgerError(
                f"the ledger of stack {self.stack_key!r} has format version {doc.get('version')!r}; this virtplan "
                f"reads version {FORMAT_VERSION}: upgrade virtplan"
            )
        self._known[seg.name] = data
        if not remembered:
            segment_memo.keep(data, doc)
        return doc

    # writing
    def update(self, sets: dict[str, Record] | None = None, drops: Iterable[str] = ()) -> None:
        """Merge `sets` (address -> fields) into the records and drop `drops`, in one write.

        Group commit: an update made while another thread of this process is writing waits
        for it, then writes every update that queued meanwhile as one delta (merged in the
        order they queued, as if written one after the other), and each call returns once
        that delta is written, or raises what the write raised. Apply's workers (one write
        per object made or deleted) then share writes instead of queueing one by one."""
        sets, drops = dict(sets or {}), sorted(set(drops))
        if not sets and not drops:
            return
        mine = _Write(sets, drops)
        with self._queue_lock:
            self._queue.append(mine)
        with self._lock:
            if mine.done:  # another thread wrote it along with its own
                if mine.error is not None:
                    raise mine.error
                return
            with self._queue_lock:
                batch, self._queue = self._queue, []
            try:
                self._write_delta(*_merged(batch))
            except BaseException as exc:
                for write in batch:
                    write.error = exc
                raise
            finally:
                for write in batch:
                    write.done = True

    def _write_delta(self, sets: dict[str, Record], drops: list[str]) -> None:
        with self._lock:
            records = self._load()
            existing = self.store_segments()
            seg = self._create("delta", (existing[-1].seq if existing else 0) + 1, {"set": sets, "drop": drops})
            if {s.name for s in existing} - {s.name for s in self._segments}:
                self._records = None  # others wrote since we read: read everything again, ours included
                return
            for address in drops:
                records.pop(address, None)
            for address, fields in sets.items():
                records.setdefault(address, {}).update(fields)
            self._segments.append(seg)

    def deltas(self) -> int:
        """How many deltas follow the base (as of the last read or write)."""
        with self._lock:
            self._load()
            return sum(1 for s in self._segments if s.type == "delta")

    def compact(self) -> None:
        """Write every record as a new base and delete the segments it folded in.

        Only the holder of the stack's lock on this host calls it, so there is one compactor
        at a time. A segment still being uploaded is left alone (it counts once complete,
        on top of the base); one that stayed incomplete for `STALE_WRITE` seconds of the
        host's clock is a write that died, and is deleted."""
        with self._lock:
            for _ in range(_WRITE_ATTEMPTS):
                segments = self.store_segments()
                if not segments or (len(segments) == 1 and segments[0].type == "base"):
                    self._records, self._segments = None, segments
                    return
                try:
                    records, folded, incomplete = self._fold(segments)
                except _Vanished:
                    continue
                base = self._create("base", segments[-1].seq + 1, {"records": records, "folded": sorted(folded)})
                fetch_all([seg.name for seg in segments if seg.name in folded], self._delete_quietly)
                self._drop_dead_writes(incomplete, base)
                self._records, self._segments = None, []
                return
            raise LedgerError(f"could not compact the ledger of stack {self.stack_key!r}: it kept changing")

    def _delete_quietly(self, name: str) -> None:
        """Delete a folded segment; one a reader holds open right now stays folded in the new
        base and goes at the next compaction."""
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):
            self.store.delete(name)
        self._known.pop(name, None)

    def _drop_dead_writes(self, incomplete: list[Segment], newest: Segment) -> None:
        if not incomplete:
            return
        now = self.store.mtime(newest.name)
        if now is None:
            return
        for seg in incomplete:
            written = self.store.mtime(seg.name)
            if written is not None and now - written > STALE_WRITE:
                self._delete_quietly(seg.name)

    def drop(self) -> None:
        """Delete the whole ledger (when the stack owns nothing on the host any more)."""
        with self._lock:
            for seg in self.store_segments():
                self.store.delete(seg.name)
            self._records, self._segments = {}, []

    def store_segments(self) -> list[Segment]:
        return self._mine(self.store.names())

    def _create(self, type_: str, seq: int, payload: dict[str, Any]) -> Segment:
        from datetime import UTC, datetime  # (only a command that writes records needs it)

        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "stack": self.stack_key,
            "type": type_,
            "seq": seq,
            "written": {"by": _writer(), "at": datetime.now(UTC).isoformat(timespec="seconds")},
            **payload,
        }
        doc["sha256"] = _checksum(doc)
        data = json.dumps(doc, sort_keys=True).encode()
        for _ in range(_WRITE_ATTEMPTS):
            name = segment_name(self.key, seq, type_)
            if self.store.create(name, data):
                self._known[name] = data
                return Segment(self.key, seq, type_, name)
        raise LedgerError(f"could not write the ledger of stack {self.stack_key!r}")  # pragma: no cover

    @property
    def last_seq(self) -> int:
        with self._lock:
            self._load()
            return self._segments[-1].seq if self._segments else 0


class _Vanished(Exception):
    """A segment listed a moment ago is gone (compacted by another writer)."""


@dataclass
class _Write:
    """One `update` call waiting to be written."""

    sets: dict[str, Record]
    drops: list[str]
    done: bool = False
    error: BaseException | None = None


def _merged(batch: list[_Write]) -> tuple[dict[str, Record], list[str]]:
    """One delta equal to the updates of `batch` applied in order. A delta drops first,
    then sets; so a drop cancels earlier sets of the address, and sets after a drop start
    the record afresh."""
    sets: dict[str, Record] = {}
    drops: set[str] = set()
    for write in batch:
        for address in write.drops:
            sets.pop(address, None)
            drops.add(address)
        for address, fields in write.sets.items():
            sets.setdefault(address, {}).update(fields)
    return sets, sorted(drops)


def stacks_on(store: _Store) -> set[str]:
    """The keys of every stack that has a ledger on this host."""
    return {stack_key_of(s.key) for s in map(parse_name, store.names()) if s is not None}
