"""The `virtplan` command line (typer). Importing the library never imports this package."""

from virtplan.cli.app import app, main

__all__ = ["app", "main"]
