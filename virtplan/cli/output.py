"""What commands print: plans, drift, progress, confirmation prompts.

rich is imported here only when something is printed. Text that comes from stacks or from
libvirt goes through `escape` before it meets rich markup.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

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

    out = console()
    if drift is not None and not drift.empty:
        from virtplan.views.drift import drift_lines

        out.print("\n".join(drift_lines(drift, the_plan.hosts)))
    out.print(plan_text(the_plan))


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


def apply_with_progress(engine: Any, the_plan: Any, observation: Any) -> Any:
    """engine.apply with a progress bar and a line per finished change (images the plan
    needs are downloaded first, with their own progress bars)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from virtplan.views.text import escape

    fetch_with_progress(engine, the_plan)

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console(), transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("applying", total=len(the_plan.changes))

        def progress(event: str, change: Any, error: str | None) -> None:
            what = f"{change.action.value} {escape(change.address)}"
            if event == "start":
                bar.update(task, description=what)
            elif event == "done":
                bar.advance(task)
                bar.console.print(f"  [green]done[/green]   {what}")
            else:
                bar.console.print(f"  [red]failed[/red] {what}: {escape(error or '')}")

        return engine.apply(the_plan, observation, progress)


def applied(report: Any) -> None:
    done = len(report.by_status("done"))
    console().print(f"[bold green]Apply complete:[/bold green] {done} change(s) applied.")
