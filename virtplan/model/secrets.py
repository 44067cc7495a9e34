"""Secret values: compared by value, never printed."""

from __future__ import annotations

import hashlib

MASK = "(sensitive)"


class Secret:
    """A string that never shows itself in repr, str, logs or plans.

    `reveal()` is the only way to read the value; equality compares the values so the
    planner can tell a changed secret from an unchanged one without printing either.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError("Secret() takes a string")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def digest(self) -> str:
        """A salted hash that proves equality without exposing short passwords."""
        return hashlib.sha256(b"virtplan-secret\0" + self._value.encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (Secret, (self._value,))


def secret(value: str | Secret | None) -> Secret | None:
    """Wrap a plain string as a Secret; None stays None."""
    if value is None or isinstance(value, Secret):
        return value
    return Secret(value)
