"""Secret values: compared by value, never printed.

Where virtplan must tell a changed secret from an unchanged one without holding it (the
digest in a domain's metadata, in a plan's field diff, in `render` output), it uses a
*keyed* digest: HMAC-SHA256 with a random key that virtplan keeps in the stack's records on
each host (`virtplan.hosts.records`) and never prints. Without the key a digest confirms
no guess, so plans posted where anyone can read them are no guessing oracle. Where no
host key is known (rendering in tests, a host the stack was never applied to) a key made
for this process is used, and forgotten with it.
"""

from __future__ import annotations

import hashlib
import hmac
import os

MASK = "(sensitive)"
#: The key of keyed digests for which no host key is known: new in every process, never kept.
PROCESS_KEY = os.urandom(32)  # what secrets.token_bytes gives, without importing `secrets` (and `random`) at start-up


def keyed_digest(key: bytes, value: str | bytes) -> str:
    """HMAC-SHA256 of `value` under `key`, hex: equal values, equal digests; without the key,
    a digest says nothing about the value."""
    data = value.encode() if isinstance(value, str) else value
    return hmac.new(key, b"virtplan-secret\0" + data, hashlib.sha256).hexdigest()


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

    def digest(self, key: bytes | None = None) -> str:
        """The keyed digest of the value under `key` (see the module docstring). Without a
        key: the unkeyed hash virtplan 0.1 wrote, kept only to recognise what it wrote (and
        for tests that prove it is printed nowhere)."""
        if key is not None:
            return keyed_digest(key, self._value)
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
    """Wrap a plain string as a Secret; None, a Secret and values of other types (which
    validation reports) stay as they are."""
    if isinstance(value, str):
        return Secret(value)
    return value
