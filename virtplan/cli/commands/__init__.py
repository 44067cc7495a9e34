"""Command groups of the `virtplan` CLI that live outside cli.py.

Each module here defines `register(app)` adding its commands to the typer app;
`virtplan.cli.app.whole_app` calls every one of them, the first time a command line names
a command not defined in cli/app.py (or asks for help). Keep module imports light (typer
only): heavy imports belong inside the command functions.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer


def register_all(app: typer.Typer) -> None:
    """Add the commands of every module in this package to `app`, in name order."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(app)
