"""How Pulumi hands inputs to a dynamic provider, for tests that call providers directly."""

from __future__ import annotations

from typing import Any


def wire(value: Any) -> Any:
    """What Pulumi hands a provider: numbers as floats, no None values."""
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [wire(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
