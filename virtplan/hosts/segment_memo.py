"""Ledger segments already verified, remembered by the SHA-256 of their bytes.

Reading a ledger parses each segment's JSON and checks its checksum, which means encoding
the document again: 20 ms of CPU for the 1 MB segment of a thousand VMs, in every command
that reads the host. The same bytes always make the same document, so a large document
verified once is kept in the cache folder (marshalled, named after its bytes' digest) and
the next command loads it in 5 ms. The bytes are still read from the host each time: only
the work of checking them is remembered. Deleting the cache only makes the next read
slower; a file that does not load is ignored; files unused for a day are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import sys
import time
from typing import Any

from virtplan.cache import cache_folder, write_atomically

#: Below this size a segment is parsed and checked faster than its memo is found.
MIN_SIZE = 64 * 1024
#: A memo unused for this long is removed (when a new one is written).
UNUSED_FOR = 24 * 3600.0


def _folder() -> str:
    # marshal's format may change between Python versions: each keeps its own files
    return os.path.join(cache_folder(), "ledger-segments", f"py{sys.version_info[0]}{sys.version_info[1]}")


def _path(data: bytes) -> str:
    return os.path.join(_folder(), hashlib.sha256(data).hexdigest())


def load(data: bytes) -> dict[str, Any] | None:
    """The document verified earlier for exactly these bytes (a fresh copy), or None."""
    if len(data) < MIN_SIZE:
        return None
    path = _path(data)
    try:
        with open(path, "rb") as f:
            doc = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # used: kept
    return doc if isinstance(doc, dict) else None


def keep(data: bytes, doc: dict[str, Any]) -> None:
    """Remember `doc`, verified from `data` (if it is large enough to be worth it)."""
    if len(data) < MIN_SIZE:
        return
    with contextlib.suppress(OSError, ValueError):  # a cache that cannot be written costs a parse, nothing else
        write_atomically(_path(data), marshal.dumps(doc))
        _prune(_folder())


def _prune(folder: str) -> None:
    now = time.time()
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):
            if now - entry.stat().st_mtime > UNUSED_FOR:
                os.unlink(entry.path)
