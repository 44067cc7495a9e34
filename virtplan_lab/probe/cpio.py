"""Write gzip-compressed ``newc`` cpio archives (the Linux initramfs format) in pure Python.

The archive is deterministic: entries are sorted by path, owned by root, and carry
mtime 0, so the same tree always yields the same bytes.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: ``path`` is relative, without a leading slash."""

    path: str
    mode: int  # st_mode: file type bits and permissions
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # (major, minor) for device nodes


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    """A character device node entry (no root privileges needed to archive one)."""
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def tree_entries(root: Path) -> Iterator[Entry]:
    """Directories, regular files and symlinks under ``root`` (not following links)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            perm = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                yield Entry(rel, stat.S_IFLNK | 0o777, os.readlink(full).encode())
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(rel, stat.S_IFDIR | perm)
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, stat.S_IFREG | perm, full.read_bytes())
            else:
                raise ValueError(f"cannot archive special file {full}")


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """An uncompressed newc archive of ``entries``, sorted by path, ending in the trailer.

    Raises ValueError on duplicate paths.
    """
    members = sorted(entries, key=lambda entry: entry.path)
    paths = [member.path for member in members]
    if len(set(paths)) != len(paths):
        raise ValueError("duplicate paths in cpio archive")
    chunks = [_member(ino, member) for ino, member in enumerate(members, start=1)]
    chunks.append(_member(0, Entry(_TRAILER, 0)))
    return b"".join(chunks)


def write_initramfs(path: Path, entries: Iterable[Entry], level: int = 6) -> None:
    """Write ``entries`` as a gzip newc cpio (gzip mtime 0: reproducible) to ``path``."""
    path.write_bytes(gzip.compress(newc_archive(entries), compresslevel=level, mtime=0))


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, *entry.rdev, len(name), 0)
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    return _pad4(header + name) + _pad4(entry.data)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)
