"""The per-stack record of what virtplan created, for objects libvirt cannot tag.

Domains and networks carry virtplan's ownership mark in their own <metadata>; storage
pools and volumes cannot, so they are recorded here, keyed by host URI and address, with
the identity libvirt gave them (pool UUID, volume path). An intent record is written
*before* an object is created, so a crash between the libvirt call and the record never
turns our own object into a foreign one. Writes are atomic (rename of a temp file).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
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
    """Thread-safe JSON record: {uri: {address: {identity..., "pending": bool}}}."""

    def __init__(self, path: Path, stack: str):
        self.path = path
        self.stack = stack
        self._lock = threading.Lock()
        self._data: dict[str, Any] = {"version": 1, "stack": stack, "hosts": {}}
        if path.is_file():
            self._data = json.loads(path.read_text())

    def records(self, uri: str) -> dict[str, dict[str, Any]]:
        """Every record for one host, by address (a copy)."""
        with self._lock:
            return {k: dict(v) for k, v in self._data["hosts"].get(uri, {}).items()}

    def get(self, uri: str, address: str) -> dict[str, Any] | None:
        with self._lock:
            record = self._data["hosts"].get(uri, {}).get(address)
            return dict(record) if record is not None else None

    def put(self, uri: str, address: str, **fields: Any) -> None:
        """Create or update a record and save at once."""
        with self._lock:
            host = self._data["hosts"].setdefault(uri, {})
            host.setdefault(address, {}).update(fields)
            self._save()

    def forget(self, uri: str, address: str) -> None:
        with self._lock:
            host = self._data["hosts"].get(uri, {})
            if host.pop(address, None) is not None:
                if not host:
                    self._data["hosts"].pop(uri, None)
                self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._data, f, indent=2, sort_keys=True)
        os.replace(tmp, self.path)
