"""`virtplan import` and `virtplan adopt`: existing libvirt objects into a stack (virtplan.workflows.importer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtplan.cli.options import host_overrides, set_debug
from virtplan.cli.output import console
from virtplan.cli.params import DebugOpt, HostOpt, StackArg


def register(app: typer.Typer) -> None:
    @app.command("import")
    def import_command(
        host: Annotated[
            list[str],
            typer.Option(
                "--host",
                metavar="NAME=URI",
                help="The host to read, as NAME=URI like every --host: NAME is its name in the written stack, "
                "e.g. --host kvm1=qemu:///system.",
            ),
        ],
        out: Annotated[Path, typer.Option("--out", help="The stack program to write, e.g. stacks/imported.py")],
        name_pattern: Annotated[
            list[str] | None,
            typer.Option("--name-pattern", help="Only objects matching this glob (repeatable), plus what they use."),
        ] = None,
        debug: DebugOpt = False,
    ) -> None:
        """Write a stack program declaring a host's existing objects (planning it is a no-op)."""
        from virtplan.errors import StackLoadError
        from virtplan.workflows.importer import import_host

        set_debug(debug)
        hosts = host_overrides(host)
        if len(hosts) != 1:
            raise StackLoadError(f"import reads one host: give one --host NAME=URI (got {len(hosts)})")
        ((host_name, uri),) = hosts.items()
        result = import_host(uri, out, name_pattern, host_name)
        ui = console()
        ui.print(f"[bold green]Wrote {out}[/bold green]: {result.count} object(s) declared.")
        for kind, names in sorted(result.declared.items()):
            ui.print(f"  {kind:<8} {', '.join(sorted(names))}")
        for what, why in sorted(result.skipped.items()):
            ui.print(f"  [yellow]left out[/yellow] {what}: {why}")
        ui.print(f"They are not owned yet: `virtplan plan {out}` shows no changes; "
                      f"`virtplan adopt {out}` takes ownership.")  # fmt: skip

    @app.command("adopt")
    def adopt_command(
        stack: StackArg,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Take ownership of the existing objects the stack declares (each must match exactly)."""
        from virtplan.workflows.importer import adopt

        set_debug(debug)
        result = adopt(stack, host_overrides(host))
        ui = console()
        ui.print(f"[bold green]Adopted {len(result.adopted)} object(s)[/bold green] into stack {stack.stem}.")
        for address in result.adopted:
            ui.print(f"  {address}")
        if result.already:
            ui.print(f"  {len(result.already)} already owned by this stack.")
        if result.missing:
            ui.print(f"  not on the host (apply creates them): {', '.join(result.missing)}")
