"""What commands print: plans, drift, progress, confirmation prompts.

rich is imported here only when something is printed. Text that comes from libvirt is
printed as rich `Text` (never read as markup); stack text embedded in markup goes through
`virtplan.views.text.escape`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from virtplan.errors import ConfirmationRequired

#: Piped answers (`echo yes | virtplan apply`) are refused on purpose: they would approve a plan
#: nobody saw, destructive changes included; --yes (and --allow-destroy) say so explicitly.
NO_TERMINAL = (
    "no terminal to confirm on; nothing was {done}. Re-run with --yes. (A piped answer such as "
    "`echo yes | virtplan ...` is not accepted: it would approve changes nobody reviewed; "
    "--yes, plus --allow-destroy for destructive changes, says so explicitly.)"
)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def print_plan(the_plan: Any, drift: Any = None) -> None:
    """The drift section (if any) and the plan, as text."""
    from virtplan.views.text import plan_text

    if the_plan.empty and (drift is None or drift.empty) and not the_plan.targets:
        print(plan_text(the_plan))  # plain text: a no-op plan does not pay for rich's import
        return
    out = console()
    if drift is not None and not drift.empty:
        from virtplan.views.drift import drift_lines

        out.print("\n".join(drift_lines(drift, the_plan.hosts)))
    out.print(plan_text(the_plan))
    if the_plan.targets:
        print_notes([
            "this plan is limited to --target " + ", ".join(the_plan.targets) + " and what they wait for; the rest "
            "of the stack may still differ from the hosts (run a plan without --target to see all of it)"
        ])  # fmt: skip


def say_waiting(text: str) -> None:
    """What a command waits for (a lock another apply holds), at once, on stderr."""
    print(text, file=sys.stderr, flush=True)


def print_notes(notes: list[str]) -> None:
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def confirm(the_plan: Any, yes: bool, allow_destroy: bool) -> None:
    """--yes (with --allow-destroy for destructive plans), or an interactive 'yes'."""
    from virtplan.engine import require_allowed

    if yes:
        require_allowed(
            the_plan, allow_destroy, "Re-run with --yes --allow-destroy, or without --yes to confirm interactively."
        )
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired(NO_TERMINAL.format(done="applied"))
    risky = the_plan.destructive()
    if risky:
        from virtplan.views.text import escape

        names = "\n".join(f"  - {c.action.value} {escape(c.address)}: {escape(c.destructive)}" for c in risky)
        console().print(f"[bold red]Destructive changes:[/bold red]\n{names}")
    import typer

    answer = typer.prompt("Apply these changes? Only 'yes' is accepted", default="", show_default=False)
    if answer.strip() != "yes":
        raise ConfirmationRequired("not confirmed; nothing was applied.")


def fetch_with_progress(engine: Any, the_plan: Any) -> None:
    """Download the images the plan needs (URL sources not in the local cache yet), with a
    progress bar each, and a line saying what was fetched and verified."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from virtplan.units import format_size
    from virtplan.views.text import escape

    with Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True), TransferSpeedColumn(),
        TimeRemainingColumn(), console=console(), transient=True,
    ) as bar:  # fmt: skip
        tasks: dict[str, Any] = {}

        def progress(vol: Any, done: int, total: int | None) -> None:
            if vol.address not in tasks:
                tasks[vol.address] = bar.add_task(f"download {escape(vol.name)}", total=total)
            bar.update(tasks[vol.address], completed=done, total=total)

        def done(vol: Any, path: Any, how: str) -> None:
            if how != "cached":
                size = format_size(path.stat().st_size)
                bar.console.print(f"  [green]{how}[/green] {escape(vol.source)} ({size}, {vol.image.algo} verified)")

        engine.fetch_images(the_plan, progress, done)


def apply_with_progress(engine: Any, the_plan: Any, observation: Any, limit: int | None = None) -> Any:
    """engine.apply with a progress bar, a line per finished change and per wait, and
    Ctrl-C handled (see `interrupts`). Lines carrying libvirt's text are rich `Text`:
    printed exactly as libvirt wrote them, never read as markup. `limit` bounds the changes
    in flight over all hosts (`--parallel`)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.text import Text

    from virtplan.apply.executor import Control

    fetch_with_progress(engine, the_plan)
    control = Control()
    with Progress(
        TextColumn("{task.description}", markup=False), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("applying", total=len(the_plan.changes))

        def progress(event: str, change: Any, text: str | None) -> None:
            what = f"{change.action.value} {change.address}"
            if event == "start":
                bar.update(task, description=what)
            elif event == "done":
                bar.advance(task)
                bar.console.print(Text.assemble("  ", ("done", "green"), "     ", what))
            elif event == "wait":
                bar.console.print(Text.assemble("  ", ("waiting", "yellow"), "  ", what, ": ", text or ""))
            else:
                bar.console.print(Text.assemble("  ", ("failed", "red"), "   ", what, ": ", text or ""))

        with interrupts(control):
            return engine.apply(the_plan, observation, progress, control=control, limit=limit)


@contextlib.contextmanager
def interrupts(control: Any) -> Iterator[None]:
    """Ctrl-C during an apply: the first one lets the changes in flight finish and starts
    nothing new (the apply then ends with its report, records written, exit 130); a second
    one abandons the changes in flight at once, saying which may be half-done."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        from virtplan.apply.executor import what

        if not control.interrupted:
            flying, left = control.interrupt()
            _now(
                f"\nInterrupt received: finishing {flying} in-flight change{'' if flying == 1 else 's'}, "
                f"not starting {left}. Press Ctrl-C again to abandon the changes in flight.\n"
            )
            return
        flying_changes = control.flying()
        saver = threading.Thread(target=control.save_records, daemon=True)  # what finished is recorded
        saver.start()
        saver.join(5.0)
        names = ", ".join(what(c) for c in flying_changes) or "none"
        _now(
            f"\nSecond interrupt: abandoned {len(flying_changes)} change(s) in flight, which may be half-done: "
            f"{names}. Nothing else was started. Re-run `virtplan apply` to converge.\n"
        )
        os._exit(130)

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _now(text: str) -> None:
    """Write to stderr at once, safely from a signal handler (no buffered stream involved)."""
    with contextlib.suppress(OSError):
        sys.stdout.flush()
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace"))


def applied(report: Any) -> None:
    """The closing line of an apply; only an apply whose every change is done gets here."""
    from rich.text import Text

    assert report.ok, "an apply that did not complete is reported as an error"
    done = len(report.by_status("done"))
    console().print(Text.assemble(("Apply complete:", "bold green"), f" {done} change(s) applied."))
