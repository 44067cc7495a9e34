"""`virtplan snapshot create|list|revert|delete`: snapshots of a stack's VMs, on demand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtplan.cli.options import open_engine
from virtplan.cli.output import console

StackArg = Annotated[Path, typer.Argument(help="Stack program, e.g. stacks/demo.py")]
VmsArg = Annotated[list[str] | None, typer.Argument(help="VM names (default: every VM of the stack)")]
NameOpt = Annotated[str, typer.Option("--name", help="The snapshot's name.")]
HostOpt = Annotated[list[str] | None, typer.Option("--host", help="Override a host's URI: NAME=URI.")]


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
    ) -> None:
        """Take snapshot NAME of the VMs (all together: running VMs pause for an instant)."""
        from virtplan.workflows.snapshots import create_all

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
    ) -> None:
        """The snapshots this stack took (declared and on demand)."""
        import json

        from virtplan.workflows.snapshots import list_all

        with open_engine(stack, host) as engine:
            found = [s for s in list_all(engine) if not vms or s.vm in vms]
        if format == "json":
            typer.echo(json.dumps([s.as_dict() for s in found], indent=2))
            return
        ui = console()
        if not found:
            ui.print("No snapshots.")
            return
        for s in found:
            how = "declared" if s.declared else "on demand"
            ui.print(f"  {s.host}/{s.vm:<20} {s.name:<20} {s.mode:<7} {s.created}  ({how})")

    @group.command("revert")
    def revert(
        stack: StackArg,
        vms: VmsArg = None,
        name: NameOpt = ...,  # type: ignore[assignment]
        yes: Annotated[bool, typer.Option("--yes", "-y", help="Revert without asking.")] = False,
        host: HostOpt = None,
    ) -> None:
        """Bring the VMs back to snapshot NAME. Destructive: their current state is discarded."""
        import sys

        from virtplan.errors import ConfirmationRequired
        from virtplan.workflows.snapshots import revert_all

        ui = console()
        which = ", ".join(vms) if vms else "every VM of the stack"
        if not yes:
            if not sys.stdin.isatty():
                raise ConfirmationRequired("reverting discards the VMs' current state; re-run with --yes")
            ui.print(f"[bold red]Destructive:[/bold red] {which} lose everything since snapshot {name}.")
            if typer.prompt("Revert? Only 'yes' is accepted", default="", show_default=False).strip() != "yes":
                raise ConfirmationRequired("not confirmed; nothing was reverted.")
        with open_engine(stack, host) as engine, engine.locked():
            done = revert_all(engine, name, vms or None)
        ui.print(f"[green]Reverted[/green] to {name}: {', '.join(done)}")

    @group.command("delete")
    def delete(
        stack: StackArg,
        vms: VmsArg = None,
        name: NameOpt = ...,  # type: ignore[assignment]
        host: HostOpt = None,
    ) -> None:
        """Delete snapshot NAME of the VMs."""
        from virtplan.workflows.snapshots import delete_all

        with open_engine(stack, host) as engine, engine.locked():
            done = delete_all(engine, name, vms or None)
        console().print(f"[green]Deleted[/green] snapshot {name} of {', '.join(done)}")
