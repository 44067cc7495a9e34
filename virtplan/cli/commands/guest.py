"""`virtplan ssh` and `virtplan console`: into a deployed VM's guest (virtplan.workflows.guest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from virtplan.cli.options import open_engine, set_debug
from virtplan.cli.params import DebugOpt, HostOpt, StackArg

VmArg = Annotated[str, typer.Argument(help="VM name as declared in the stack", metavar="VM")]


def register(app: typer.Typer) -> None:
    @app.command("ssh")
    def ssh(
        stack: StackArg,
        vm: VmArg,
        command: Annotated[
            list[str] | None, typer.Argument(help="A command to run instead of a login shell (after --).")
        ] = None,
        user: Annotated[
            str | None, typer.Option("--user", "-l", help="Log in as USER (default: the stack's cloud-init user).")
        ] = None,
        identity: Annotated[
            Path | None,
            typer.Option(
                "--identity", "-i", metavar="FILE",
                help="Private key (default: the one in ~/.ssh matching the stack's ssh_keys).",
            ),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="Print the ssh command instead of running it.")
        ] = False,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:  # fmt: skip
        """Log into a VM's guest with ssh: its lease or reserved address, the stack's user and key.

        When the host is reached over ssh (qemu+ssh://), ssh jumps through it: guests on NAT networks are
        reachable from their hypervisor only. Each VM's host key is kept per VM (by its UUID) under
        virtplan's cache folder. `virtplan ssh STACK VM -- uptime` runs one command.
        """
        import shlex
        import sys

        from virtplan.workflows.guest import declared_vm, exec_ssh, ssh_command

        set_debug(debug)
        with open_engine(stack, host) as engine:
            cmd = ssh_command(engine, declared_vm(engine.stack, vm), command, user, identity)
        for note in cmd.notes:
            print(f"note: {note}", file=sys.stderr)
        if dry_run:
            typer.echo(shlex.join(cmd.argv))
            return
        login = f"{cmd.user}@{cmd.address.ip}" if cmd.user else cmd.address.ip
        print(f"ssh {login} (the VM's {cmd.address.how} address)", file=sys.stderr)
        exec_ssh(cmd)

    @app.command("console")
    def console(
        stack: StackArg,
        vm: VmArg,
        host: HostOpt = None,
        debug: DebugOpt = False,
    ) -> None:
        """Attach this terminal to a running VM's serial console (Ctrl-] leaves)."""
        import os
        import sys

        from virtplan.hosts.console import attach_console
        from virtplan.workflows.guest import vm_on_its_host

        set_debug(debug)
        with open_engine(stack, host) as engine:
            target, conn = vm_on_its_host(engine, vm)
            fd_in, fd_out = sys.stdin.fileno(), sys.stdout.fileno()
            print(f"Connected to the serial console of {target.address}; Ctrl-] leaves.", file=sys.stderr)
            saved = None
            if os.isatty(fd_in):
                import termios
                import tty

                saved = termios.tcgetattr(fd_in)
                tty.setraw(fd_in, termios.TCSANOW)  # not TCSAFLUSH: what was typed already goes to the guest
            try:
                why = attach_console(conn, target.name, fd_in, fd_out)
            finally:
                if saved is not None:
                    termios.tcsetattr(fd_in, termios.TCSADRAIN, saved)
        print(f"\nLeft the console of {target.address} ({why}).", file=sys.stderr)
