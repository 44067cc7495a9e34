"""`virtplan console-log`: show a VM's serial console output."""

from __future__ import annotations

from typing import Annotated

import typer

from virtplan.cli.options import DebugOpt, HostOpt, StackArg, open_engine, set_debug


def register(app: typer.Typer) -> None:
    @app.command("console-log")
    def console_log(
        stack: StackArg,
        vm: Annotated[str, typer.Argument(help="VM name as declared in the stack", metavar="VM")],
        host: HostOpt = None,
        tail_lines: Annotated[int, typer.Option("--tail", "-n", help="Only the last N lines (0: all).")] = 0,
        debug: DebugOpt = False,
    ) -> None:
        """Print a VM's serial console log (read through libvirt, so remote hosts work)."""
        set_debug(debug)
        from virtplan.errors import StackLoadError
        from virtplan.hosts.console import read_console_log, tail

        with open_engine(stack, host) as engine:
            matches = [v for v in engine.stack.vms if v.name == vm]
            if not matches:
                names = ", ".join(sorted(v.name for v in engine.stack.vms)) or "none"
                raise StackLoadError(f"the stack declares no VM {vm!r} (VMs: {names})")
            if len(matches) > 1:
                raise StackLoadError(f"several hosts have a VM {vm!r}; this command takes a unique name")
            target = matches[0]
            assert target.host is not None
            text = read_console_log(engine.connection(target.host.name), target)
        typer.echo(tail(text, tail_lines), nl=not text.endswith("\n") or tail_lines > 0)
