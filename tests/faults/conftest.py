"""The fault suite drives the CLI with the integration tests' helpers (review_support)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
