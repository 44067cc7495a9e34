"""`virtplan validate STACK...`: check stack programs offline, for pre-commit hooks and CI lint.

Runs each program and validates it exactly as `plan` does before contacting anything, and
stops there: no libvirt connection (libvirt is not even imported), no download. Exit 0 when
every stack is valid, 1 when any is not (each problem is printed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtplan.cli.options import host_overrides, set_debug
from virtplan.cli.params import DebugOpt, HostOpt


def register(app: typer.Typer) -> None:
    @app.command("validate")
    def validate(
        stacks: Annotated[list[Path], typer.Argument(help="Stack programs, e.g. stacks/*.py", metavar="STACK")],
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Check stack programs without contacting any host (exit 0: valid, 1: invalid).

        Every problem of every stack is reported, as `plan` would before doing anything; no
        host is contacted and nothing is downloaded, so it runs in pre-commit hooks and CI
        lint jobs without libvirt access.
        """
        import sys

        from virtplan.cli.options import Settings
        from virtplan.errors import VirtplanError
        from virtplan.model import load_stack

        set_debug(debug)
        overrides = host_overrides(host)
        failed = 0
        for path in stacks:
            try:
                stack = load_stack(path, overrides)
            except VirtplanError as exc:
                if Settings.debug:
                    import traceback

                    traceback.print_exception(exc)
                failed += 1
                print(f"{path}: error: {exc}", file=sys.stderr)
                continue
            counts: dict[str, int] = {}
            for r in [*stack.hosts, *stack.managed()]:
                counts[r.kind] = counts.get(r.kind, 0) + 1
            what = ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in counts.items())
            typer.echo(f"{path}: valid (stack {stack.key}: {what})")
        if failed:
            raise typer.Exit(1)
