"""The stack's records: what virtplan knows about the objects it made, kept on the hosts.

Records hold what libvirt cannot carry itself: which pools, volumes, snapshots and frozen
layers a stack owns (with the identity they had when virtplan made them), and what
virtplan last applied to each object (the baseline `drift` compares against). They live
in each host's ledger (`virtplan.hosts.ledger`), so every operator, CI runner and Pulumi
process sees the same ones; local files are caches at most.

The API is keyed by host URI and object address, as the planner and apply use it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from virtplan.hosts.ledger import COMPACT_AFTER, HostLedger, Record, file_key

#: Bytes of the key of the stack's keyed digests of secrets (see `HostRecords.secret_key`).
KEY_BYTES = 32
#: Seconds a key being written by another process may take before it counts as abandoned.
KEY_WAIT = 10.0


class Records(Protocol):
    """Read and write one stack's records, per host URI."""

    def records(self, uri: str) -> dict[str, Record]: ...

    def view(self, uri: str) -> Mapping[str, Record]: ...

    def get(self, uri: str, address: str) -> Record | None: ...

    def put(self, uri: str, address: str, **fields: Any) -> None: ...

    def put_many(self, uri: str, records: dict[str, Record]) -> None: ...

    def forget(self, uri: str, address: str) -> None: ...


class RecordLookup(Protocol):
    """What reading single records needs (`Records` and `RecordsRead` both have it)."""

    def get(self, uri: str, address: str) -> Record | None: ...


class RecordsRead:
    """A `Records` read record by record without copying each one: one view per host,
    taken on first use. For code that only reads many records (planning looks up each
    declared volume's); what it returns must not be changed."""

    def __init__(self, store: Records):
        self.store = store
        self._views: dict[str, Mapping[str, Record]] = {}

    def get(self, uri: str, address: str) -> Record | None:
        view = self._views.get(uri)
        if view is None:
            view = self._views[uri] = self.store.view(uri)
        return view.get(address)


class HostRecords:
    """The records of one stack in the ledgers of its hosts (opened on first use)."""

    def __init__(self, stack_key: str, open_ledger: Callable[[str], HostLedger]):
        self.stack_key = stack_key
        self._open = open_ledger
        self._ledgers: dict[str, HostLedger] = {}
        self._lock = threading.Lock()

    def ledger(self, uri: str) -> HostLedger:
        with self._lock:
            ledger = self._ledgers.get(uri)
        if ledger is None:
            # Opened outside the lock: it may connect to the host (hundreds of ms over ssh),
            # and the hosts of a stack are read in parallel.
            opened = self._open(uri)
            with self._lock:
                ledger = self._ledgers.setdefault(uri, opened)
        return ledger

    def records(self, uri: str) -> dict[str, Record]:
        """Every record for one host, by address (a copy of each)."""
        return self.ledger(uri).records()

    def view(self, uri: str) -> Mapping[str, Record]:
        """Every record for one host, not copied: to read, never to change."""
        return self.ledger(uri).view()

    def get(self, uri: str, address: str) -> Record | None:
        return self.ledger(uri).get(address)

    def put(self, uri: str, address: str, **fields: Any) -> None:
        self.ledger(uri).update({address: fields})

    def put_many(self, uri: str, records: dict[str, Record]) -> None:
        self.ledger(uri).update(records)

    def forget(self, uri: str, address: str) -> None:
        self.ledger(uri).update(drops=[address])

    def untidy(self) -> bool:
        """Some ledger this process used has many deltas since its base, or no records left
        (worth compacting, or deleting)."""
        with self._lock:
            ledgers = list(self._ledgers.values())
        return any(ledger.deltas() >= COMPACT_AFTER or not ledger.records() for ledger in ledgers)

    def secret_key(self, uri: str, create: bool = False) -> bytes | None:
        """The key of this stack's keyed digests of secrets on the host at `uri` (see
        `virtplan.model.secrets`): random, made once (with `create`, by the first apply that
        needs it), kept beside the stack's ledger in virtplan's records pool and never
        printed, so digests in plans confirm no guess. None if there is none yet (or, without
        `create`, while another process is still writing it)."""
        store = self.ledger(uri).store
        name = f"{file_key(self.stack_key)}.secret-key"
        data = store.read(name)
        if not create:
            return data if data is not None and len(data) == KEY_BYTES else None
        deadline = time.monotonic() + KEY_WAIT
        while data is None or len(data) != KEY_BYTES:
            if data is None:
                store.create(name, os.urandom(KEY_BYTES))  # False: another process made it meanwhile
            elif time.monotonic() > deadline:  # a writer that died before the bytes were in: start again
                store.delete(name)
                deadline = time.monotonic() + KEY_WAIT
            else:
                time.sleep(0.05)  # another process is writing it right now
            data = store.read(name)
        return data

    def reconnect(self, uri: str, connect: Callable[[], Any]) -> None:
        """Move the ledger of the host at `uri` to the connection `connect()` opens, if the
        ledger talks to libvirt (see Engine.apply)."""
        ledger = self.ledger(uri)
        if ledger.store.uses_connection:
            ledger.store.reconnect(connect())

    def neighbours(self, uri: str) -> set[str]:
        """The other stacks that keep records on the host at `uri`."""
        return self.ledger(uri).neighbours()

    def compact(self) -> None:
        """Fold each ledger this process used into one base segment; delete a ledger that
        holds no record any more (the stack owns nothing there). Only while holding the
        stack's lock on those hosts (one compactor at a time)."""
        with self._lock:
            ledgers = list(self._ledgers.values())
        for ledger in ledgers:
            if not ledger.records():
                if ledger.last_seq:
                    ledger.drop()
            elif len(ledger.store_segments()) > 1:
                ledger.compact()


# The local store of virtplan 0.1, re-exported while modules still name it in annotations.
from virtplan.hosts.legacy_state import STATE_DIR_ENV, StateStore, default_state_path  # noqa: E402

__all__ = ["STATE_DIR_ENV", "HostRecords", "Records", "StateStore", "default_state_path"]
