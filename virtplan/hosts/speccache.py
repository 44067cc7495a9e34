"""A memo of parsed domain and volume specs, keyed by the exact XML libvirt returned.

Parsing a domain's XML costs about 0.1 ms, a volume's about 0.03 ms; hashing either a few
microseconds. A no-op plan of a thousand VMs reads two thousand unchanged documents, so
remembering "this XML parses to this spec" makes observing cost little more than fetching.
The key is the XML's hash, so any change made outside virtplan (or by it, or a volume's
timestamps moving) misses the cache and is parsed afresh. The cache is disposable:
deleting the file only makes the next plan slower.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from virtplan.documents.parse import Owner
from virtplan.documents.specs import Spec, VMSpec

Entry = tuple[VMSpec, Owner | None]


def xml_key(xml: str) -> str:
    return hashlib.sha1(xml.encode(), usedforsecurity=False).hexdigest()


class SpecCache:
    """Thread-safe {xml hash: (spec, owner)} persisted as one JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, Any] = {}
        self._used: set[str] = set()
        self._dirty = False
        if path is not None and path.is_file():
            try:
                self._entries = json.loads(path.read_text()).get("entries", {})
            except (OSError, ValueError):
                self._entries = {}  # a broken cache is an empty cache

    def get(self, key: str) -> Entry | None:
        """A domain's spec and owner remembered for the XML of hash `key` (a copy)."""
        raw = self._take(key, "owner")
        if raw is None:
            return None
        owner = Owner(**raw["owner"]) if raw["owner"] is not None else None
        return json.loads(raw["spec"]), owner

    def volume(self, key: str) -> tuple[Spec, str] | None:
        """A volume's spec and path remembered for the XML of hash `key` (a copy)."""
        raw = self._take(key, "path")
        return (json.loads(raw["spec"]), raw["path"]) if raw is not None else None

    def put(self, key: str, spec: VMSpec, owner: Owner | None) -> None:
        """Remember a copy of a domain's `spec` (later changes to the dict are not remembered)."""
        self._keep(key, {"spec": json.dumps(spec), "owner": None if owner is None else vars(owner)})

    def put_volume(self, key: str, spec: Spec, path: str) -> None:
        """Remember a copy of a volume's spec and path for the XML of hash `key`."""
        self._keep(key, {"spec": json.dumps(spec), "path": path})

    def _take(self, key: str, field: str) -> dict[str, Any] | None:
        """The entry for `key` if it is of the kind that has `field` ("owner": a domain's,
        "path": a volume's), marked as used."""
        with self._lock:
            raw: dict[str, Any] | None = self._entries.get(key)
            if raw is None or field not in raw:
                return None
            self._used.add(key)
            return raw

    def _keep(self, key: str, raw: dict[str, Any]) -> None:
        with self._lock:
            self._entries[key] = raw
            self._used.add(key)
            self._dirty = True

    def save(self) -> None:
        """Write the entries used since loading (stale ones are dropped), if anything changed."""
        with self._lock:
            if self.path is None or not (self._dirty or len(self._used) < len(self._entries)):
                return
            entries = {k: v for k, v in self._entries.items() if k in self._used}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            import tempfile

            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".cache-")
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "entries": entries}, f)
            os.replace(tmp, self.path)
            self._dirty = False
