"""Unit-test fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from builders import declare

from virtplan.model import Stack, validate


@pytest.fixture
def update_golden() -> bool:
    """VIRTPLAN_UPDATE_GOLDEN=1 rewrites golden files from the current output."""
    return os.environ.get("VIRTPLAN_UPDATE_GOLDEN") == "1"


@pytest.fixture
def build() -> Callable[..., Stack]:
    """build(fn) runs fn() as a stack program and returns the validated stack."""

    def _build(program: Callable[[], object], name: str = "t") -> Stack:
        with declare(name) as stack:
            program()
        validate(stack)
        return stack

    return _build
