"""A memo of parsed domain and volume specs, keyed by the exact XML libvirt returned.

Parsing a domain's XML costs about 0.1 ms, a volume's about 0.03 ms; hashing either a few
microseconds. A no-op plan of a thousand VMs reads two thousand unchanged documents, so
remembering "this XML parses to this spec" makes observing cost little more than fetching.
The key is the XML's hash, so any change made outside virtplan (or by it, or a volume's
timestamps moving) misses the cache and is parsed afresh. The cache is disposable:
deleting the file only makes the next plan slower.
"""

from __future__ import annotations

import marshal
import sys
import threading
from pathlib import Path
from typing import Any

from virtplan.cache import write_atomically
from virtplan.documents.parse import Owner
from virtplan.documents.specs import Spec, VMSpec, generic

Entry = tuple[VMSpec, Owner | None]
#: The file's name in the stack's cache folder. marshal's format may change between Python
#: versions: each version keeps its own file.
FILE_NAME = f"specs.py{sys.version_info[0]}{sys.version_info[1]}.marshal"


class SpecCache:
    """Thread-safe {xml hash: spec, and a domain's owner or a volume's path} persisted as
    one file. Specs are kept marshalled: each `get` returns a fresh copy, and loading the
    file of a thousand VMs takes a millisecond (as JSON: five, and as much again to copy)."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, bytes, Any]] = {}
        self._used: set[str] = set()
        self._dirty = False
        if path is not None and path.is_file():
            try:
                entries = marshal.loads(path.read_bytes())
            except (OSError, EOFError, ValueError, TypeError):
                entries = {}  # a broken cache is an empty cache
            if isinstance(entries, dict):  # only well-formed entries (the file may be anything)
                self._entries = {k: v for k, v in entries.items() if _well_formed(v)}

    def get(self, key: str) -> Entry | None:
        """A domain's spec and owner remembered for the XML of hash `key` (a copy)."""
        raw = self._take(key, "vm")
        spec = _copy(raw)
        if raw is None or spec is None:
            return None
        return spec, (Owner(**raw[2]) if raw[2] is not None else None)

    def volume(self, key: str) -> tuple[Spec, str] | None:
        """A volume's spec and path remembered for the XML of hash `key` (a copy)."""
        raw = self._take(key, "volume")
        spec = _copy(raw)
        return (spec, raw[2]) if raw is not None and spec is not None else None

    def put(self, key: str, spec: VMSpec, owner: Owner | None) -> None:
        """Remember a copy of a domain's `spec` (later changes to the dict are not remembered)."""
        self._keep(key, ("vm", marshal.dumps(generic(spec)), None if owner is None else vars(owner)))

    def put_volume(self, key: str, spec: Spec, path: str) -> None:
        """Remember a copy of a volume's spec and path for the XML of hash `key`."""
        self._keep(key, ("volume", marshal.dumps(spec), path))

    def _take(self, key: str, kind: str) -> tuple[str, bytes, Any] | None:
        """The entry for `key` if it is of `kind` ("vm" or "volume"), marked as used."""
        with self._lock:
            raw = self._entries.get(key)
            if raw is None or raw[0] != kind:
                return None
            self._used.add(key)
            return raw

    def _keep(self, key: str, raw: tuple[str, bytes, Any]) -> None:
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
            write_atomically(self.path, marshal.dumps(entries))
            self._dirty = False


def _well_formed(entry: object) -> bool:
    return isinstance(entry, tuple) and len(entry) == 3 and entry[0] in ("vm", "volume") and isinstance(entry[1], bytes)


def _copy(entry: tuple[str, bytes, Any] | None) -> Any:
    """A fresh copy of the entry's spec; None if there is none (or its bytes are broken)."""
    if entry is None:
        return None
    try:
        return marshal.loads(entry[1])
    except (EOFError, ValueError, TypeError):
        return None
