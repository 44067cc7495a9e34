"""The local state file of virtplan 0.1 (`.virtplan/<stack>.json`), kept for two uses:

- migrating an operator's records to the hosts (`virtplan.hosts.records`), once;
- a file-backed record store for unit tests that plan without a host.

Its API is the `Records` protocol. Writes take a file lock, re-read the file, apply the
change and replace the file atomically.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_DIR_ENV = "VIRTPLAN_STATE_DIR"


def default_state_path(stack_name: str, stack_path: Path | None) -> Path:
    """$VIRTPLAN_STATE_DIR/<stack>.json, else .virtplan/<stack>.json beside the stack file."""
    env = os.environ.get(STATE_DIR_ENV)
    if env:
        folder = Path(env)
    elif stack_path is not None:
        folder = stack_path.parent / ".virtplan"
    else:
        folder = Path.cwd() / ".virtplan"
    return folder / f"{stack_name}.json"


class StateStore:
    """JSON record {uri: {address: {identity..., "pending": bool}}} shared safely between
    threads and processes: every write takes a file lock, re-reads the file, applies its
    change and replaces the file atomically; reads see the file's latest version."""

    def __init__(self, path: Path, stack: str):
        self.path = path
        self.stack = stack
        self._lock = threading.Lock()
        self._data: dict[str, Any] = _empty(stack)
        self._stamp: tuple[int, int] | None = None

    def records(self, uri: str) -> dict[str, dict[str, Any]]:
        """Every record for one host, by address (a copy)."""
        with self._lock:
            self._refresh()
            return {k: dict(v) for k, v in self._data["hosts"].get(uri, {}).items()}

    def view(self, uri: str) -> dict[str, dict[str, Any]]:
        """Every record for one host, not copied: to read, never to change."""
        with self._lock:
            self._refresh()
            return dict(self._data["hosts"].get(uri, {}))

    def get(self, uri: str, address: str) -> dict[str, Any] | None:
        with self._lock:
            self._refresh()
            record = self._data["hosts"].get(uri, {}).get(address)
            return dict(record) if record is not None else None

    def put(self, uri: str, address: str, **fields: Any) -> None:
        """Create or update a record; on disk when this returns."""

        def change(data: dict[str, Any]) -> None:
            data["hosts"].setdefault(uri, {}).setdefault(address, {}).update(fields)

        self._write(change)

    def put_many(self, uri: str, records: dict[str, dict[str, Any]]) -> None:
        """Create or update several records (address -> fields) in one write."""

        def change(data: dict[str, Any]) -> None:
            host = data["hosts"].setdefault(uri, {})
            for address, fields in records.items():
                host.setdefault(address, {}).update(fields)

        self._write(change)

    def forget(self, uri: str, address: str) -> None:
        def change(data: dict[str, Any]) -> None:
            host = data["hosts"].get(uri, {})
            host.pop(address, None)
            if not host:
                data["hosts"].pop(uri, None)

        self._write(change)

    def _refresh(self) -> None:
        """Reload if the file changed since it was last read (caller holds the lock)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._data, self._stamp = _empty(self.stack), None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            self._data = json.loads(self.path.read_text())
            self._stamp = stamp

    def _write(self, change: Callable[[dict[str, Any]], None]) -> None:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, FileLock(str(self.path) + ".lock"):
            self._stamp = None  # another process may have written: always re-read here
            self._refresh()
            change(self._data)
            import tempfile

            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as f:
                json.dump(self._data, f, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
            st = self.path.stat()
            self._stamp = (st.st_mtime_ns, st.st_size)


def _empty(stack: str) -> dict[str, Any]:
    return {"version": 1, "stack": stack, "hosts": {}}
