"""Helpers for writing stack programs (cloning and import generate readable Python)."""

from __future__ import annotations

import json
import keyword
import re
from typing import Any


def literal(value: Any) -> str:
    """A Python literal for `value`, strings double-quoted as the project writes them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ")"
    return repr(value)


def identifier(text: str, taken: set[str], suffix: str = "") -> str:
    """A fresh Python variable name derived from `text` (+ `suffix`), added to `taken`."""
    base = (re.sub(r"\W+", "_", text).strip("_").lower() or "x") + suffix
    if base[0].isdigit() or keyword.iskeyword(base):
        base = "_" + base
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    taken.add(name)
    return name
