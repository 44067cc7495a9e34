"""The `virtplan` command line (typer). Importing the library never imports this package."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see virtplan.cli.early)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point. Hosts the command will read start connecting before the
    command line and the stack program are even looked at (`virtplan.cli.early`)."""
    import gc

    gc.set_threshold(50_000, 20, 100)
    from virtplan.cli import early

    early.start(sys.argv[1:])
    from virtplan.cli.app import main as run

    run()


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, imported when asked for (start-up imports it after `early`)
        from virtplan.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
