"""Plain helpers for unit tests: an in-memory stack builder and realistic QEMU host facts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from virtplan.documents.capabilities import GuestArch, HostFacts
from virtplan.model import Stack, collecting

QEMU_FACTS = HostFacts(
    "x86_64",
    {
        "x86_64": GuestArch(
            "x86_64",
            ("qemu", "kvm"),
            ("pc-i440fx-7.2", "pc", "pc-q35-7.2", "q35"),
            {"pc": "pc-i440fx-7.2", "q35": "pc-q35-7.2"},
            "pc-i440fx-7.2",
        )
    },
)


@contextmanager
def declare(name: str = "t") -> Iterator[Stack]:
    """Collect the resources constructed in the block into a stack (not yet validated)."""
    stack = Stack(name)
    with collecting(stack):
        yield stack
