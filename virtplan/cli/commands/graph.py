"""`virtplan graph`: the stack's dependency graph as Mermaid or Graphviz DOT."""

from __future__ import annotations

from typing import Annotated

import typer

from virtplan.cli.options import open_engine, set_debug
from virtplan.cli.params import DebugOpt, HostOpt, StackArg


def register(app: typer.Typer) -> None:
    @app.command("graph")
    def graph(
        stack: StackArg,
        host: HostOpt = None,
        format: Annotated[str, typer.Option("--format", help="mermaid or dot")] = "mermaid",
        with_plan: Annotated[
            bool, typer.Option("--plan", help="Mark each resource with its planned action (reads the hosts).")
        ] = False,
        debug: DebugOpt = False,
    ) -> None:
        """Print the dependency graph of the stack's resources. Without --plan it reads only
        the stack file; with --plan it plans (changing nothing) and marks the actions."""
        from virtplan.errors import StackLoadError
        from virtplan.views.graph import dot, mermaid, stack_graph

        set_debug(debug)
        if format not in ("mermaid", "dot"):
            raise StackLoadError(f"--format {format!r}: use mermaid or dot")
        with open_engine(stack, host) as engine:
            the_plan = engine.plan()[0] if with_plan else None
            g = stack_graph(engine.stack, the_plan)
        typer.echo(mermaid(g) if format == "mermaid" else dot(g), nl=False)
