"""`virtplan snapshot create|list|revert|delete`: snapshots of a stack's VMs, on demand."""

from __future__ import annotations

from typing import Annotated

import typer

from virtplan.cli.options import open_engine, set_debug
from virtplan.cli.output import NO_TERMINAL, console
from virtplan.cli.params import DebugOpt, HostOpt, StackArg

VmsArg = Annotated[list[str] | None, typer.Argument(help="VM names (default: every VM of the stack)", metavar="VM")]
NameOpt = Annotated[str, typer.Option("--name", help="The snapshot's name.")]


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Snapshots of a stack's VMs: one VM, some, or the whole environment at once.",
                        no_args_is_help=True)  # fmt: skip
    app.add_typer(group, name="snapshot")

    @group.command("create")
    def create(
        stack: StackArg,
        vms: VmsArg = None,
        name: NameOpt = ...,  # type: ignore[assignment]
        memory: Annotated[
            bool, typer.Option("--memory", help="Checkpoint running VMs with their memory (default: disk-only).")
        ] = False,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Take snapshot NAME of the VMs (all together: running VMs pause for an instant)."""
        from virtplan.workflows.snapshots import create_all

        set_debug(debug)
        with open_engine(stack, host) as engine, engine.locked():
            done = create_all(engine, name, vms or None, memory=memory)
        kind = "memory" if memory else "disk-only"
        console().print(f"[green]Snapshot {name}[/green] ({kind}) of {len(done)} VM(s): {', '.join(done)}")

    @group.command("list")
    def list_(
        stack: StackArg,
        vms: VmsArg = None,
        host: HostOpt = None,
        format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
        debug: DebugOpt = False,
    ) -> None:
        """The snapshots this stack took (declared and on demand), and whether each can still be reverted to."""
        import json

        from virtplan.cli.options import check_format
        from virtplan.views.text import escape
        from virtplan.workflows.snapshots import list_all

        set_debug(debug)
        check_format(format, ("text", "json"))
        with open_engine(stack, host) as engine:
            found = [s for s in list_all(engine) if not vms or s.vm in vms]
        if format == "json":
            typer.echo(json.dumps([s.as_dict() for s in found], indent=2))
            return
        ui = console()
        if not found:
            ui.print("No snapshots.")
            return
        rows = [(f"{s.host}/{s.vm}", s.name, s.mode, s.created, "declared" if s.declared else "on demand",
                 "yes" if s.blocked is None else f"no: {s.blocked}") for s in found]  # fmt: skip
        header = ("VM", "SNAPSHOT", "KIND", "TAKEN", "HOW", "REVERTABLE")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            line = "  ".join(f"{cell:<{w}}" for cell, w in zip(row, widths, strict=False)) + "  " + row[-1]
            ui.print(escape(line) if row is not header else f"[bold]{escape(line)}[/bold]")

    @group.command("revert")
    def revert(
        stack: StackArg,
        vms: VmsArg = None,
        name: NameOpt = ...,  # type: ignore[assignment]
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Revert without asking.")] = False,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Bring the VMs back to snapshot NAME. Destructive: their current state is discarded."""
        import sys

        from virtplan.errors import ConfirmationRequired
        from virtplan.workflows.snapshots import check_revert, revert_all

        set_debug(debug)
        ui = console()
        with open_engine(stack, host) as engine:
            targets = check_revert(engine, name, vms or None)  # before asking: is there anything to revert to?
            which = ", ".join(vm for _, _, vm in targets)
            if not yes:
                if not sys.stdin.isatty():
                    raise ConfirmationRequired(
                        "reverting discards the VMs' current state; " + NO_TERMINAL.format(done="reverted")
                    )
                ui.print(f"[bold red]Destructive:[/bold red] {which} lose everything since snapshot {name}.")
                if typer.prompt("Revert? Only 'yes' is accepted", default="", show_default=False).strip() != "yes":
                    raise ConfirmationRequired("not confirmed; nothing was reverted.")
            with engine.locked():
                done = revert_all(engine, name, vms or None)
        ui.print(f"[green]Reverted[/green] to {name}: {', '.join(done)}")

    @group.command("delete")
    def delete(
        stack: StackArg,
        vms: VmsArg = None,
        name: NameOpt = ...,  # type: ignore[assignment]
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Delete snapshot NAME of the VMs."""
        from virtplan.workflows.snapshots import delete_all

        set_debug(debug)
        with open_engine(stack, host) as engine, engine.locked():
            done = delete_all(engine, name, vms or None)
        console().print(f"[green]Deleted[/green] snapshot {name} of {', '.join(done)}")
