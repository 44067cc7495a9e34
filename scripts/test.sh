#!/usr/bin/env bash
# Set up (quick when already done), then run the test suite; arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The Pulumi engine for tests/pulumi_engine (cached by version; minutes only on a cold machine).
# If it cannot be built, those tests fail with the reason; the rest still run.
bash scripts/pulumi-engine.sh || echo "test: the Pulumi engine could not be built; tests/pulumi_engine will fail" >&2
# Lint and types first (seconds), as the review would: ruff, the formatter, strict mypy.
if [ "$#" -eq 0 ]; then
  .venv/bin/python -m ruff check .
  .venv/bin/python -m ruff format --check .
  .venv/bin/python -m mypy virtplan
fi
exec .venv/bin/python -m pytest -q "$@"
