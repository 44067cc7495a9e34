"""Facts about local image files (format and virtual size), read from their headers."""

from __future__ import annotations

import struct
from pathlib import Path

QCOW2_MAGIC = b"QFI\xfb"


def image_format(path: Path) -> str:
    """'qcow2' when the file starts with the qcow2 magic, else 'raw'."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def image_virtual_size(path: Path) -> int:
    """The guest-visible size: the qcow2 header's size field, or the raw file's length."""
    with path.open("rb") as f:
        header = f.read(32)
    if header[:4] == QCOW2_MAGIC:
        (size,) = struct.unpack(">Q", header[24:32])
        return int(size)
    return path.stat().st_size
