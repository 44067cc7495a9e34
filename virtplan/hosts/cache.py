"""virtplan's local cache folder: things that are faster to keep than to recompute.

Nothing here is needed for a correct result: deleting the folder (or running with another
HOME, on another machine) only makes the next command slower. `$VIRTPLAN_CACHE_DIR`, else
`$XDG_CACHE_HOME/virtplan`, else `~/.cache/virtplan`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_DIR_ENV = "VIRTPLAN_CACHE_DIR"


def cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "virtplan"


def stack_cache(stack_key: str, name: str) -> Path:
    """A cache file of one stack (by its identity, so a renamed file keeps its cache)."""
    digest = hashlib.sha256(stack_key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stack_key)[:40]
    return cache_dir() / "stacks" / f"{safe}-{digest}" / name
