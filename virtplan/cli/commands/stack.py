"""`virtplan stack rename`: a stack's identity changes, its objects stay (virtplan.workflows.rename)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from virtplan.cli.options import host_overrides, set_debug
from virtplan.cli.output import NO_TERMINAL, console
from virtplan.cli.params import DebugOpt, HostOpt, StackArg


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="A stack's identity on its hosts.", no_args_is_help=True)
    app.add_typer(group, name="stack")

    @group.command("rename")
    def rename(
        stack: StackArg,
        to: Annotated[str, typer.Option("--to", help="The stack's new name.")],
        project: Annotated[
            str | None, typer.Option("--project", help="A new project too (default: keep the project).")
        ] = None,
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Rename without asking.")] = False,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Rename a deployed stack: its objects are kept (UUIDs, MACs, disks), marked as the
        new stack's, and the program declares the new name."""
        import sys

        from virtplan.errors import ConfirmationRequired
        from virtplan.workflows.rename import rename_stack

        set_debug(debug)
        ui = console()

        def confirm(plan: Any) -> None:
            ui.print(f"Rename stack {plan.old!r} to {plan.new!r} (nothing is re-created):")
            for name in sorted(plan.marks):
                ui.print(f"  host {name}: re-mark {len(plan.marks[name])} domain(s)/network(s), "
                         f"move {plan.records[name]} record(s)")  # fmt: skip
            if yes:
                return
            if not sys.stdin.isatty():
                raise ConfirmationRequired(NO_TERMINAL.format(done="renamed"))
            answer = typer.prompt("Rename? Only 'yes' is accepted", default="", show_default=False)
            if answer.strip() != "yes":
                raise ConfirmationRequired("not confirmed; nothing was renamed.")

        rename_stack(Path(stack), to, project, host_overrides(host), confirm)
        ui.print(f"[bold green]Renamed.[/bold green] {stack} now declares name_stack({to!r}).")
