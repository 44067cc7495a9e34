"""`virtplan clone`: a new environment from a deployed stack (see virtplan.workflows.clone)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtplan.cli.options import host_overrides, pairs, set_debug
from virtplan.cli.output import console
from virtplan.cli.params import DebugOpt, HostOpt


def register(app: typer.Typer) -> None:
    @app.command("clone")
    def clone_command(
        stack: Annotated[Path, typer.Argument(help="The deployed stack to clone, e.g. stacks/lab.py", metavar="STACK")],
        name: Annotated[str, typer.Option("--name", help="The clone's name; prefixes every name in it.")],
        subnet_map: Annotated[
            list[str] | None,
            typer.Option("--subnet-map", help="OLD=NEW subnet for a network (repeatable); else a free one if needed."),
        ] = None,
        host_map: Annotated[
            list[str] | None,
            typer.Option("--host-map", help="SOURCE=TARGET host (repeatable): put those VMs on another host."),
        ] = None,
        full: Annotated[bool, typer.Option("--full", help="Full disk copies instead of linked clones.")] = False,
        from_snapshot: Annotated[
            str | None, typer.Option("--from-snapshot", help="Start from this disk-only snapshot of every VM.")
        ] = None,
        connected: Annotated[
            bool, typer.Option("--connected", help="Keep NAT/routed modes and host bridges (default: isolated).")
        ] = False,
        stopped: Annotated[bool, typer.Option("--stopped", help="Define the clone's VMs, do not start them.")] = False,
        out: Annotated[
            Path | None, typer.Option("--out", help="Where to write the clone's program (default: stacks/<name>.py).")
        ] = None,
        no_apply: Annotated[bool, typer.Option("--no-apply", help="Freeze and write the program only.")] = False,
        host: HostOpt = None,
        format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
        debug: DebugOpt = False,
    ) -> None:
        """Clone a deployed environment: new names, MACs and isolated networks, linked disks."""
        import json

        from virtplan.cli.options import check_format

        set_debug(debug)
        check_format(format, ("text", "json"))

        from virtplan.workflows.clone import CloneOptions, clone

        opts = CloneOptions(
            name,
            pairs(subnet_map, "--subnet-map", "OLD=NEW, e.g. --subnet-map 10.20.0.0/24=10.99.0.0/24"),
            pairs(host_map, "--host-map", "OLD=NEW, e.g. --host-map kvm1=kvm2"),
            full,
            from_snapshot,
            connected,
            "stopped" if stopped else None,
            out,
        )
        ui = console()
        quiet = format == "json"
        result = clone(stack, opts, host_overrides(host), apply=not no_apply,
                       say=None if quiet else lambda m: ui.print(f"  {m}"))  # fmt: skip
        if quiet:
            typer.echo(json.dumps({
                "name": result.name, "stack_file": str(result.stack_file), "vms": result.vms,
                "networks": {k: {"name": v[0], "cidr": v[1]} for k, v in result.networks.items()},
                "frozen": result.frozen, "mode": result.mode, "seconds": round(result.seconds, 3),
            }, indent=2))  # fmt: skip
            return
        ui.print(f"[bold green]Clone {result.name}[/bold green] ({result.mode}) in {result.seconds:.1f} s: "
                      f"{result.stack_file}")  # fmt: skip
        for source, new in result.vms.items():
            ui.print(f"  vm       {source} -> {new}")
        for source, (new, cidr) in result.networks.items():
            ui.print(f"  network  {source} -> {new} {cidr or ''}")
        ui.print(f"Destroy it with: virtplan destroy {result.stack_file}")
