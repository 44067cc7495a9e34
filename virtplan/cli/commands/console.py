"""`virtplan console-log`: show (or follow) a VM's serial console output."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from virtplan.cli.options import open_engine, set_debug
from virtplan.cli.params import DebugOpt, HostOpt, StackArg

VmArg = Annotated[str, typer.Argument(help="VM name as declared in the stack", metavar="VM")]


def register(app: typer.Typer) -> None:
    @app.command("console-log")
    def console_log(
        stack: StackArg,
        vm: VmArg,
        host: HostOpt = None,
        tail_lines: Annotated[int, typer.Option("--tail", "-n", help="Only the last N lines (0: all).")] = 0,
        follow: Annotated[
            bool, typer.Option("--follow", "-f", help="Keep printing what the VM writes, until Ctrl-C.")
        ] = False,
        interval: Annotated[
            float, typer.Option("--interval", help="With --follow: seconds between reads.", metavar="SECONDS", min=0.1)
        ] = 1.0,
        debug: DebugOpt = False,
    ) -> None:
        """Print a VM's serial console log (read through libvirt, so remote hosts work)."""
        import codecs
        import sys
        import time

        from virtplan.hosts.console import console_log_bytes, tail
        from virtplan.workflows.guest import vm_on_its_host

        set_debug(debug)
        with open_engine(stack, host) as engine:
            target, conn = vm_on_its_host(engine, vm)
            data, offset = console_log_bytes(conn, target, 0)
            text = tail(data.decode(errors="replace"), tail_lines)
            if text:
                sys.stdout.write(text if text.endswith("\n") or not tail_lines else text + "\n")
                sys.stdout.flush()
            elif not follow:
                print(f"note: the console log of {target.address} is empty: the VM has not written to its "
                      "serial console yet (or has not been started).", file=sys.stderr)  # fmt: skip
                return
            if not follow:
                return
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            running = _run_id(conn, target.name)
            try:
                while True:
                    time.sleep(interval)
                    now = _run_id(conn, target.name)
                    if now not in (running, -1):  # a new QEMU process: libvirt started its log afresh
                        print(f"note: {target.address} restarted; its console log starts afresh.", file=sys.stderr)
                        offset = 0
                    running = now if now != -1 else running
                    data, size = console_log_bytes(conn, target, offset, refresh=offset == 0)
                    offset = size
                    if data:
                        sys.stdout.write(decoder.decode(data))
                        sys.stdout.flush()
            except KeyboardInterrupt:
                return  # Ctrl-C ends following; it is not an error


def _run_id(conn: Any, name: str) -> int:
    """The domain's run ID (new at every start; -1 while stopped or gone)."""
    import libvirt

    try:
        return int(conn.lookupByName(name).ID())
    except libvirt.libvirtError:
        return -1
