"""virtplan's local cache folder: things that are faster to keep than to recompute.

Nothing here is needed for a correct result: deleting the folder (or running with another
HOME, on another machine) only makes the next command slower. `$VIRTPLAN_CACHE_DIR`, else
`$XDG_CACHE_HOME/virtplan`, else `~/.cache/virtplan`. Light on purpose (the command line
reads it before importing the rest of virtplan).
"""

from __future__ import annotations

import contextlib
import hashlib
import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from pathlib import Path

CACHE_DIR_ENV = "VIRTPLAN_CACHE_DIR"


def cache_folder() -> str:
    """The cache folder's path."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return env
    xdg = os.environ.get("XDG_CACHE_HOME")
    return os.path.join(xdg if xdg else os.path.join(os.path.expanduser("~"), ".cache"), "virtplan")


def cache_dir() -> Path:
    from pathlib import Path

    return Path(cache_folder())


def write_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a cache file whole or not at all (a reader never sees half of one): its folder
    made if need be, the bytes written beside it, then moved over it. Raises OSError."""
    import tempfile

    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def stack_cache(stack_key: str, name: str) -> Path:
    """A cache file of one stack (by its identity, so a renamed file keeps its cache)."""
    digest = hashlib.sha256(stack_key.encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stack_key)[:40]
    return cache_dir() / "stacks" / f"{safe}-{digest}" / name
