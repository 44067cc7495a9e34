"""The `virtplan` command line. Thin: parses options, calls the engine, prints.

Exit codes: 0 success (and `plan` without changes), 2 `plan --detailed-exitcode` with
changes, 1 any error (one readable message; the traceback only with --debug).
"""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from collections.abc import Iterator
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


FormatOpt = Annotated[str, typer.Option("--format", help="text, json or markdown")]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait for another apply of this stack to finish (0: fail at once).",
        min=0,
    ),
]
PLAN_FORMATS = ("text", "json", "markdown")


@app.command()
def plan(
    stack: StackArg,
    host: HostOpt = None,
    format: FormatOpt = "text",
    out: Annotated[Path | None, typer.Option("--out", help="Save the plan as JSON, to apply exactly it later.")] = None,
    commands: Annotated[
        bool, typer.Option("--commands", help="Also give the equivalent virsh commands of each change.")
    ] = False,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")
    ] = False,
    debug: DebugOpt = False,
) -> None:
    """Show what apply would change, and why. Changes nothing."""
    _set_debug(debug)
    if format not in PLAN_FORMATS:
        raise StackLoadError(f"--format {format!r}: use text, json or markdown")
    with _engine(stack, host) as engine:
        the_plan, observation = engine.plan()
        report = _drift(engine, observation)
        cmds = _virsh_commands(engine, the_plan, observation) if commands else None
        doc = None
        if out is not None or format != "text":
            from virtplan.plan.planfile import plan_document

            doc = plan_document(the_plan, engine.stack, observation.hosts, engine.store, stack,
                                drift=report.to_list(), commands=cmds)  # fmt: skip
    if out is not None and doc is not None:
        from virtplan.plan.planfile import write_plan

        write_plan(doc, out)
    if format == "json" and doc is not None:
        from virtplan.plan.planfile import dumps

        typer.echo(dumps(doc), nl=False)
    elif format == "markdown" and doc is not None:
        from virtplan.views.graph import mermaid, stack_graph
        from virtplan.views.markdown import plan_markdown

        typer.echo(plan_markdown(doc, mermaid(stack_graph(engine.stack, the_plan))), nl=False)
    else:
        _print_plan_text(the_plan, report)
        if cmds is not None:
            from virtplan.views.virsh import script

            typer.echo("")
            typer.echo(script(the_plan, cmds))
    if out is not None:
        where = sys.stdout if format == "text" else sys.stderr
        print(f"Saved the plan to {out}; `virtplan apply {out}` applies exactly it.", file=where)
    if detailed_exitcode and not the_plan.empty:
        raise typer.Exit(2)


@app.command()
def apply(
    stack: Annotated[Path, typer.Argument(help="Stack program (stacks/demo.py), or a plan saved by `plan --out`")],
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes or a saved plan.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    debug: DebugOpt = False,
) -> None:
    """Plan, confirm, then apply through libvirt; or apply a saved plan exactly."""
    _set_debug(debug)
    from virtplan.plan.planfile import looks_like_plan_file

    if stack.suffix == ".json" or looks_like_plan_file(stack):
        if host:
            raise StackLoadError("--host cannot change a saved plan: it is applied to the hosts it was made for")
        _apply_saved(stack, allow_destroy, lock_timeout)
        return
    _run(stack, host, yes, allow_destroy, destroy=False, lock_timeout=lock_timeout)


@app.command()
def destroy(
    stack: StackArg,
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    debug: DebugOpt = False,
) -> None:
    """Delete everything this stack owns (and nothing else)."""
    _set_debug(debug)
    _run(stack, host, yes, allow_destroy, destroy=True, lock_timeout=lock_timeout)


def _run(
    stack: Path, host: list[str] | None, yes: bool, allow_destroy: bool, destroy: bool, lock_timeout: float = 0.0
) -> None:
    console = _console()
    with _engine(stack, host) as engine, _locked(engine, lock_timeout):
        the_plan, observation = engine.plan(destroy=destroy)
        _print_plan_text(the_plan, None if destroy else _drift(engine, observation))
        if not the_plan.empty:
            _confirm(the_plan, yes, allow_destroy, console)
            report = _apply_with_progress(engine, the_plan, observation, console)
        _after_apply(engine, observation)
    if not the_plan.empty:
        done = len(report.by_status("done"))
        console.print(f"[bold green]Apply complete:[/bold green] {done} change(s) applied.")


def _apply_saved(path: Path, allow_destroy: bool, lock_timeout: float) -> None:
    """Apply a saved plan: refuse if stale, else apply exactly its changes (no prompt:
    the plan was reviewed; destructive changes still need --allow-destroy)."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack
    from virtplan.plan import planfile

    console = _console()
    doc = planfile.read_plan(path)
    stack_file = planfile.stack_file_of(doc, path)
    planfile.check_stack_file(doc, stack_file)
    engine = Engine(load_stack(stack_file, dict(doc["hosts"])))
    if engine.stack.name != doc["stack"]:
        raise planfile.StalePlan([f"it is for stack {doc['stack']!r}, but {stack_file} is stack {engine.stack.name!r}"])
    console.print(f"Applying the saved plan {path} (stack {doc['stack']}, made {doc.get('created_at', '?')}).")
    with engine, _locked(engine, lock_timeout):
        the_plan, observation = engine.plan(destroy=bool(doc.get("destroy")))
        planfile.check_current(doc, the_plan, engine.stack, observation.hosts, engine.store)
        _print_plan_text(the_plan, None)
        if the_plan.empty:
            _after_apply(engine, observation)
            return
        risky = the_plan.destructive()
        if risky and not allow_destroy:
            names = "\n".join(f"  - {c.action.value} {c.address}: {c.destructive}" for c in risky)
            raise ConfirmationRequired(
                f"the saved plan has destructive changes; nothing was applied:\n{names}\nRe-run with --allow-destroy."
            )
        report = _apply_with_progress(engine, the_plan, observation, console)
        _after_apply(engine, observation)
    done = len(report.by_status("done"))
    console.print(f"[bold green]Apply complete:[/bold green] {done} change(s) applied.")


@contextlib.contextmanager
def _locked(engine: Any, timeout: float) -> Iterator[None]:
    """The stack's lock and its hosts' locks, held while observing and applying."""
    from virtplan.hosts.locks import ApplyLocks

    hosts = {h.name: h.uri for h in engine.stack.hosts}
    with ApplyLocks(engine.stack.name, engine.store.path, hosts, timeout) as locks:
        for note in locks.notes():
            print(f"note: {note}", file=sys.stderr)
        yield


def _drift(engine: Any, observation: Any, pending: bool = False) -> Any:
    from virtplan.plan.drift import detect

    return detect(engine.stack, observation.hosts, engine.store, observation.renderer, pending=pending)


def _after_apply(engine: Any, observation: Any) -> None:
    """After a complete apply: drop records of objects deleted outside virtplan that the
    stack no longer declares, and complete the records of what was applied."""
    from virtplan.plan.drift import forget_vanished, record_baseline

    forget_vanished(engine.stack, observation.hosts, engine.store)
    record_baseline(engine.stack, observation.hosts, engine.store, observation.renderer)


def _virsh_commands(engine: Any, the_plan: Any, observation: Any) -> dict[str, list[str]]:
    from virtplan.views.virsh import plan_commands

    return plan_commands(the_plan, engine.stack, observation.renderer, observation.hosts, engine.store)


def _print_plan_text(the_plan: Any, drift: Any) -> None:
    from virtplan.views.text import plan_text

    console = _console()
    if drift is not None and not drift.empty:
        from virtplan.views.drift import drift_lines

        console.print("\n".join(drift_lines(drift, the_plan.hosts)))
    console.print(plan_text(the_plan))


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


def _set_debug(debug: bool) -> None:
    global _debug
    _debug = debug


def _register_command_modules() -> None:
    from virtplan.cli.commands import register_all

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
