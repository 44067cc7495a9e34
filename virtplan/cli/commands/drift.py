"""`virtplan drift`: what changed on the hosts outside virtplan since it last applied."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from virtplan.cli.options import open_engine, set_debug, unreachable
from virtplan.cli.output import console
from virtplan.cli.params import DebugOpt, HostOpt, KeepGoingOpt, StackArg


def register(app: typer.Typer) -> None:
    @app.command("drift")
    def drift(
        stack: StackArg,
        host: HostOpt = None,
        format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
        detailed_exitcode: Annotated[
            bool, typer.Option("--detailed-exitcode", help="Exit 2 when something changed outside virtplan.")
        ] = False,
        keep_going: KeepGoingOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Report changes made outside virtplan, field by field, apart from the stack's own
        pending changes. Changes nothing."""
        from virtplan.errors import StackLoadError
        from virtplan.views.drift import drift_lines
        from virtplan.views.text import escape

        set_debug(debug)
        if format not in ("text", "json"):
            raise StackLoadError(f"--format {format!r}: use text or json")
        with open_engine(stack, host, connect_early=True) as engine:
            observation = engine.observe(keep_going=keep_going)
            report = engine.drift(observation, pending=True)
            hosts = {h.name: h.uri for h in engine.stack.hosts}
        if format == "json":
            doc = {
                "stack": engine.stack.name,
                "drift": report.to_list(),
                "pending": [{"address": p.address, "fields": p.fields} for p in report.pending],
                "untracked": report.untracked,
                **({"unreachable": observation.unreachable} if observation.unreachable else {}),
            }
            typer.echo(json.dumps(doc, indent=2, default=str))
        else:
            ui = console()
            if report.empty:
                ui.print("No changes outside virtplan.")
            else:
                ui.print("\n".join(drift_lines(report, hosts)))
                n = len(report.drifted)
                ui.print(
                    f"[bold]{n} object{'s' if n > 1 else ''} changed outside virtplan.[/bold] "
                    "`virtplan plan` shows how applying the stack undoes that."
                )
            if report.pending:
                ui.print("\n[dim]Changed in the stack since the last apply (pending, not drift):[/dim]")
                for p in report.pending:
                    ui.print(f"  [dim]{escape(p.address)}: {', '.join(p.fields)}[/dim]")
            if report.untracked:
                ui.print(
                    "\n[dim]No record of what was last applied (applied by an older virtplan; "
                    f"the next apply records it): {escape(', '.join(report.untracked))}[/dim]"
                )
        if observation.unreachable:
            unreachable(observation.unreachable)  # after what the other hosts show
            raise typer.Exit(1)
        if detailed_exitcode and not report.empty:
            raise typer.Exit(2)
