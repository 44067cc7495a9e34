"""Figures of the suites that count what they tried (cases, clear errors, injections, ...):
each suite records them here, and the run prints them all at its end (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

FIGURES = Path(__file__).resolve().parent.parent / ".pytest_cache" / "virtplan-figures"


def record_figures(suite: str, figures: dict[str, object]) -> None:
    """Keep a suite's figures for the summary at the end of the run."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{suite}.json").write_text(json.dumps(figures))
