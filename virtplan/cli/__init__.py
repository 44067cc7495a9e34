"""The `virtplan` command line (typer). Importing the library never imports this package."""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see virtplan.cli.early)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point. Hosts the command will read start connecting before the
    command line and the stack program are even looked at (`virtplan.cli.early`)."""
    import gc

    # What a command allocates (the stack, what it read, the plan) lives until it exits: a
    # young-generation collection finds next to no garbage and costs ~0.15 us per object
    # it looks at (one per 50,000 allocations was 7 ms of a no-op plan of 1000 VMs).
    gc.set_threshold(100_000, 20, 100)
    from virtplan.cli import early

    early.start(sys.argv[1:])
    from virtplan.cli.running import direct, run

    command = direct(sys.argv[1:])  # `virtplan plan FILE`: a plain call, without typer's import
    if command is None:
        from virtplan.cli.app import invoke

        command = invoke
    try:
        run(command)
    except SystemExit as exc:
        _exit(exc.code)


def _exit(code: Any) -> None:
    """Leave as `sys.exit(code)` would, without the interpreter freeing its heap object by
    object (a plan of a thousand VMs holds about a million objects: 25 ms of a 0.45 s
    command). What exiting must do is still done: exit handlers run, output is flushed. Only
    once no other thread that the interpreter would wait for runs; otherwise `sys.exit`."""
    import os
    import threading

    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.current_thread()):
        sys.exit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as the interpreter does with a SystemExit that is not a number
        print(code, file=sys.stderr)
        status = 1
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`virtplan plan | head`)
            status = status or 120  # what the interpreter returns when it cannot flush
    os._exit(status)


def __getattr__(name: str) -> Any:
    if name == "app":  # the typer app, imported when asked for (start-up imports it after `early`)
        from virtplan.cli.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
