"""Fixtures for runs of the real Pulumi engine (see engine_support.py).

The engine is built by scripts/pulumi-engine.sh (scripts/test.sh runs it first). Where it is
missing these tests fail with that instruction: CI must never pass by skipping them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import engine_bin, missing_engine


@pytest.fixture(scope="session")
def pulumi_bin() -> Path:
    """The folder holding `pulumi` and its Python plugins (fails the test if they are missing)."""
    problem = missing_engine()
    if problem:
        pytest.fail(problem)
    return engine_bin()
