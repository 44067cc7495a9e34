"""Byte sizes with units: "2GiB", "512 MiB", "1.5G", 1073741824.

Binary units (KiB, MiB, GiB, TiB and the bare K, M, G, T as in libvirt and qemu-img) are
powers of 1024; decimal units (KB, MB, GB, TB) are powers of 1000. Anything else is an
error that lists the accepted units.
"""

from __future__ import annotations

import functools
import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
ACCEPTED = "B, KiB, MiB, GiB, TiB (binary) or KB, MB, GB, TB (decimal)"


def parse_size(value: int | str) -> int:
    """Return the number of bytes `value` denotes; raise ValueError naming the fix."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '2GiB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as '2GiB', got {value!r}")
    return _parse_text(value)


@functools.lru_cache(maxsize=1024)
def _parse_text(value: str) -> int:
    """parse_size of a string; remembered, as a stack repeats a few sizes many times."""
    match = _SIZE.match(value)
    if not match:
        raise ValueError(f"cannot read size {value!r}; write a number and a unit such as '2GiB'")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} in {value!r}; use {ACCEPTED}")
    return int(float(number) * factor)


def format_size(size: int) -> str:
    """Render bytes with the largest binary unit that keeps a short exact-ish number."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            value = size / factor
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.2f} {unit}"
    return f"{size} B"


def exact_size(size: int) -> str:
    """Bytes with the largest binary unit that divides them exactly ("256MiB"), else the
    bare number ("1000"): what a stack program would write, and what parse_size reads back."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)
