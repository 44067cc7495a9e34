"""The `virtplan` command line. Thin: parses options, calls the engine, prints.

Exit codes: 0 success (and `plan` without changes), 2 `plan --detailed-exitcode` with
changes, 1 any error (one readable message; the traceback only with --debug).
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer

from virtplan.errors import ConfirmationRequired, StackLoadError, VirtplanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Infrastructure as code for libvirt: plan, review, apply.",
    pretty_exceptions_enable=False,
)

StackArg = Annotated[Path, typer.Argument(help="Stack program, e.g. stacks/demo.py")]
HostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--host", help="Override a host's URI: NAME=URI (repeatable). VIRTPLAN_URI overrides the default host."
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
_debug = False


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _host_overrides(hosts: list[str] | None) -> dict[str, str]:
    out = {}
    for item in hosts or []:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            raise StackLoadError(f"--host {item!r}: write NAME=URI, e.g. --host local=qemu:///system")
        out[name] = uri
    return out


def _engine(stack_file: Path, hosts: list[str] | None) -> Any:
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    return Engine(load_stack(stack_file, _host_overrides(hosts)))


@app.command()
def plan(
    stack: StackArg,
    host: HostOpt = None,
    format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Show what apply would change, and why. Changes nothing."""
    _set_debug(debug)
    with _engine(stack, host) as engine:
        the_plan, _ = engine.plan()
    _print_plan(the_plan, format)
    if detailed_exitcode and not the_plan.empty:
        raise typer.Exit(2)


@app.command()
def apply(
    stack: StackArg,
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Plan, confirm, then apply through libvirt."""
    _set_debug(debug)
    _run(stack, host, yes, allow_destroy, destroy=False)


@app.command()
def destroy(
    stack: StackArg,
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Delete everything this stack owns (and nothing else)."""
    _set_debug(debug)
    _run(stack, host, yes, allow_destroy, destroy=True)


def _run(stack: Path, host: list[str] | None, yes: bool, allow_destroy: bool, destroy: bool) -> None:
    from virtplan.present import plan_text

    console = _console()
    with _engine(stack, host) as engine:
        the_plan, observation = engine.plan(destroy=destroy)
        console.print(plan_text(the_plan))
        if the_plan.empty:
            return
        _confirm(the_plan, yes, allow_destroy, console)
        report = _apply_with_progress(engine, the_plan, observation, console)
    done = len(report.by_status("done"))
    console.print(f"[bold green]Apply complete:[/bold green] {done} change(s) applied.")


def _confirm(the_plan: Any, yes: bool, allow_destroy: bool, console: Any) -> None:
    risky = the_plan.destructive()
    names = "\n".join(f"  - {c.action.value} {c.address}: {c.destructive}" for c in risky)
    if yes:
        if risky and not allow_destroy:
            raise ConfirmationRequired(
                f"the plan has destructive changes; nothing was applied:\n{names}\n"
                "Re-run with --yes --allow-destroy, or without --yes to confirm interactively."
            )
        return
    if not sys.stdin.isatty():
        raise ConfirmationRequired("no terminal to confirm on; nothing was applied. Re-run with --yes.")
    if risky:
        console.print(f"[bold red]Destructive changes:[/bold red]\n{names}")
    answer = typer.prompt("Apply these changes? Only 'yes' is accepted", default="", show_default=False)
    if answer.strip() != "yes":
        raise ConfirmationRequired("not confirmed; nothing was applied.")


def _apply_with_progress(engine: Any, the_plan: Any, observation: Any, console: Any) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(), console=console, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("applying", total=len(the_plan.changes))

        def progress(event: str, change: Any, error: str | None) -> None:
            if event == "start":
                bar.update(task, description=f"{change.action.value} {change.address}")
            elif event == "done":
                bar.advance(task)
                bar.console.print(f"  [green]done[/green]   {change.action.value} {change.address}")
            else:
                bar.console.print(f"  [red]failed[/red] {change.action.value} {change.address}: {error}")

        return engine.apply(the_plan, observation, progress)


@app.command()
def show(
    stack: StackArg,
    host: HostOpt = None,
    format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    debug: DebugOpt = False,
) -> None:
    """What is deployed: per host, each owned object, its state, MACs and IPs."""
    from virtplan.units import format_size

    _set_debug(debug)
    with _engine(stack, host) as engine:
        rows = engine.inventory()
    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    console = _console()
    if not rows:
        console.print("Nothing deployed by this stack.")
        return
    width = max(len(row["name"]) for row in rows) + 2
    current = None
    for row in rows:
        if row["host"] != current:
            current = row["host"]
            console.print(f"[bold]Host {current}[/bold]")
        if row["kind"] == "vm":
            guest = row.get("guest") or {}
            nics = "; ".join(
                f"{n['network']} {n['mac']} {n['ip'] or '(no lease)'}"
                + (" (guest confirms)" if n["ip"] and guest.get("ip") == n["ip"] else "")
                for n in row["nics"]
            )
            size = format_size(row["memory"]) if row.get("memory") else "?"
            console.print(f"  vm       {row['name']:<{width}} {row['state']:<8} {row['vcpus']} vCPU, {size}  {nics}")
        else:
            detail = row.get("detail")
            detail = format_size(detail) if isinstance(detail, int) else (detail or "")
            console.print(f"  {row['kind']:<8} {row['name']:<{width}} {row['state']:<8} {detail}")


@app.command()
def render(
    stack: StackArg,
    host: HostOpt = None,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="Print passwords in clear.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Print the exact libvirt XML (and cloud-init files) that apply would define."""
    from virtplan.model import VM, Network, Pool, Volume

    _set_debug(debug)
    with _engine(stack, host) as engine:
        renderer = engine.observe().renderer
        for r in engine.stack.managed():
            typer.echo(f"<!-- {r.address} -->")
            if isinstance(r, Network):
                typer.echo(renderer.network_xml(r))
            elif isinstance(r, Pool):
                typer.echo(renderer.pool_xml(r))
            elif isinstance(r, Volume):
                typer.echo(renderer.volume_xml(r))
            elif isinstance(r, VM):
                typer.echo(renderer.domain_xml(r, reveal_secrets=show_secrets))
                if r.cloud_init is not None:
                    for name, content in renderer.seed_files(r, reveal_secrets=show_secrets).items():
                        typer.echo(f"# --- {r.address} cloud-init {name} ---")
                        typer.echo(content)


def _print_plan(the_plan: Any, format: str) -> None:
    from virtplan.present import plan_text

    if format == "json":
        typer.echo(json.dumps(the_plan.to_dict(), indent=2, default=str))
    elif format == "text":
        _console().print(plan_text(the_plan))
    else:
        raise StackLoadError(f"--format {format!r}: use text or json")


def _set_debug(debug: bool) -> None:
    global _debug
    _debug = debug


def _register_command_modules() -> None:
    from virtplan.commands import register_all

    register_all(app)


_register_command_modules()


def main() -> None:
    """Console-script entry point: run the app, turning errors into one-line messages."""
    try:
        rc = app(standalone_mode=False)  # returns the code of typer.Exit in this mode
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("aborted; nothing more was applied.", file=sys.stderr)
        sys.exit(1)
    except VirtplanError as exc:
        _fail(str(exc), exc)
    except Exception as exc:
        if type(exc).__module__ == "libvirt":
            _fail(f"libvirt: {exc}", exc)
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):  # click's usage errors
            exc.show()
            sys.exit(exc.exit_code)
        _fail(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)", exc)


def _fail(message: str, exc: BaseException) -> None:
    if _debug:
        traceback.print_exception(exc)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
