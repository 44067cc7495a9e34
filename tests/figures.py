"""Figures of the suites that count what they tried (cases, clear errors, injections, ...):
each suite records them here, and the run prints them all at its end (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

#: The run's figures folder (made by the controlling pytest process, inherited by its workers).
FIGURES_ENV = "VIRTPLAN_FIGURES"


def figures_dir() -> Path:
    return Path(os.environ.get(FIGURES_ENV) or Path(tempfile.gettempdir()) / "virtplan-figures")


def record_figures(suite: str, figures: dict[str, object]) -> None:
    """Keep a suite's figures for the summary at the end of the run."""
    folder = figures_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{suite}.json").write_text(json.dumps(figures))
