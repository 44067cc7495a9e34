"""Helpers for writing stack programs (cloning and import generate readable Python)."""

from __future__ import annotations

import json
from typing import Any


def literal(value: Any) -> str:
    """A Python literal for `value`, strings double-quoted as the project writes them."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, tuple):
        return "(" + ", ".join(literal(v) for v in value) + ")"
    return repr(value)
