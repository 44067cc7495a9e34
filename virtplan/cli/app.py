"""The `virtplan` command line (typer). Thin: parses options, calls the engine, prints.
Exit codes and error messages: `virtplan.cli.running`.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from virtplan.cli import planning
from virtplan.cli.options import check_format, open_engine, set_debug, unreachable
from virtplan.cli.output import (
    applied,
    apply_with_progress,
    confirm,
    console,
    print_notes,
    print_plan,
    say_waiting,
)
from virtplan.cli.params import (
    CommandsOpt,
    DebugOpt,
    DetailedExitcodeOpt,
    HostOpt,
    KeepGoingOpt,
    LockTimeoutOpt,
    ParallelOpt,
    PlanFormatOpt,
    PlanOutOpt,
    ReplaceOpt,
    StackArg,
    TargetOpt,
    typed,
)
from virtplan.cli.running import Aborted, run, version_text
from virtplan.errors import OwnershipError, StackLoadError

#: The CLI: the commands defined here, and those of `virtplan.cli.commands`, which are
#: added on first need (`whole_app`): a command defined here runs without importing them.
#: Importers get the whole app as `app`.
_app = typer.Typer(
    no_args_is_help=True,
    help="Infrastructure as code for libvirt: plan, review, apply.\n\n"
    "Shell completion for bash, zsh and fish: `virtplan --install-completion` adds it to your shell's "
    "start-up file; `virtplan --show-completion` prints the script instead.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no type labels, no boxes, no rich import for --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@_app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", is_eager=True, callback=_show_version,
                     help="Print virtplan's version (and Python's, libvirt's) and exit."),
    ] = False,
) -> None:  # fmt: skip
    """The options of `virtplan` itself (the commands have their own)."""


_app.command("plan")(
    typed(planning.plan, stack=StackArg, host=HostOpt, format=PlanFormatOpt, out=PlanOutOpt, commands=CommandsOpt,
          detailed_exitcode=DetailedExitcodeOpt, target=TargetOpt, replace=ReplaceOpt, keep_going=KeepGoingOpt,
          debug=DebugOpt)
)  # fmt: skip


@_app.command()
def apply(
    stack: Annotated[Path, typer.Argument(help="Stack program (stacks/demo.py), or a plan saved by `plan --out`")],
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Apply without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes or a saved plan.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    target: TargetOpt = None,
    replace: ReplaceOpt = None,
    parallel: ParallelOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Plan, confirm, then apply through libvirt; or apply a saved plan exactly."""
    set_debug(debug)
    from virtplan.plan.planfile import looks_like_plan_file

    if stack.suffix == ".json" or looks_like_plan_file(stack):
        if host or target or replace:
            raise StackLoadError(
                "--host, --target and --replace cannot change a saved plan: it is applied exactly as it was made"
            )
        _apply_saved(stack, allow_destroy, lock_timeout, parallel)
        return
    _converge(stack, host, yes, allow_destroy, destroy=False, lock_timeout=lock_timeout, targets=target,
              replace=replace, parallel=parallel)  # fmt: skip


@_app.command()
def destroy(
    stack: StackArg,
    host: HostOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Destroy without asking.")] = False,
    allow_destroy: Annotated[
        bool, typer.Option("--allow-destroy", help="Allow destructive changes with --yes.")
    ] = False,
    lock_timeout: LockTimeoutOpt = 0.0,
    target: TargetOpt = None,
    parallel: ParallelOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Delete everything this stack owns (and nothing else); with --target, only those
    objects and what must go before them."""
    set_debug(debug)
    _converge(stack, host, yes, allow_destroy, destroy=True, lock_timeout=lock_timeout, targets=target,
              parallel=parallel)  # fmt: skip


def _converge(stack: Path, host: list[str] | None, yes: bool, allow_destroy: bool, destroy: bool,
              lock_timeout: float, targets: list[str] | None = None,
              replace: list[str] | None = None, parallel: int | None = None) -> None:  # fmt: skip
    with open_engine(stack, host, connect_early=True) as engine, engine.locked(lock_timeout, say_waiting) as notes:
        print_notes(notes)
        the_plan, observation = engine.plan(destroy=destroy, targets=targets, replace=replace)
        left = engine.not_owned(observation) if destroy and not targets else []
        if destroy and left and not the_plan.changes:
            raise OwnershipError(
                f"this stack owns none of its {len(left)} objects on its hosts ({', '.join(left)}): nothing was "
                f"destroyed. They were imported and not adopted (or belong to someone else); run `virtplan adopt "
                f"{stack}` to take them over, then destroy"
            )
        print_plan(the_plan, None if destroy else engine.drift(observation))
        if left:
            adopt = f"run `virtplan adopt {stack}` first"
            print_notes([f"left alone, not owned by this stack ({adopt}): {', '.join(left)}"])
        if not the_plan.empty:
            confirm(the_plan, yes, allow_destroy)
            report = apply_with_progress(engine, the_plan, observation, parallel)
        else:
            engine.apply(the_plan, observation)  # bookkeeping only
    if not the_plan.empty:
        applied(report)


def _apply_saved(path: Path, allow_destroy: bool, lock_timeout: float, parallel: int | None = None) -> None:
    """Apply a saved plan: refuse if stale, else apply exactly its changes (no prompt:
    the plan was reviewed; destructive changes still need --allow-destroy)."""
    from virtplan.engine import load_saved_plan, require_allowed

    doc, engine = load_saved_plan(path)
    console().print(f"Applying the saved plan {path} (stack {doc['stack']}, made {doc.get('created_at', '?')}).")
    with engine, engine.locked(lock_timeout, say_waiting) as notes:
        print_notes(notes)
        the_plan, observation = engine.plan_saved(doc)
        print_plan(the_plan)
        if not the_plan.empty:
            require_allowed(the_plan, allow_destroy, "Re-run with --allow-destroy.")
        report = apply_with_progress(engine, the_plan, observation, parallel) if the_plan.changes else None
        if report is None:
            engine.apply(the_plan, observation)  # bookkeeping only
    if report is not None:
        applied(report)


@_app.command()
def show(
    stack: StackArg,
    host: HostOpt = None,
    format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    keep_going: KeepGoingOpt = False,
    debug: DebugOpt = False,
) -> None:
    """What is deployed: per host, each owned object, its state, MACs and IPs."""
    set_debug(debug)
    check_format(format, ("text", "json"))
    with open_engine(stack, host, connect_early=True) as engine:
        observation = engine.observe(keep_going=keep_going)
        rows = engine.inventory(observation)
    _show(rows, format)
    if observation.unreachable:
        unreachable(observation.unreachable)
        raise typer.Exit(1)


def _show(rows: list[dict[str, Any]], format: str) -> None:
    from virtplan.units import format_size

    if format == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    out = console()
    if not rows:
        out.print("Nothing deployed by this stack.")
        return
    width = max(len(row["name"]) for row in rows) + 2
    current = None
    for row in rows:
        if row["host"] != current:
            current = row["host"]
            out.print(f"[bold]Host {current}[/bold]")
        if row["kind"] == "vm":
            guest = row.get("guest") or {}
            nics = "; ".join(f"{n['network']} {n['mac']} {_nic_address(n, guest)}" for n in row["nics"])
            size = format_size(row["memory"]) if row.get("memory") else "?"
            out.print(f"  vm       {row['name']:<{width}} {row['state']:<8} {row['vcpus']} vCPU, {size}  {nics}")
        else:
            detail = row.get("detail")
            detail = format_size(detail) if isinstance(detail, int) else (detail or "")
            out.print(f"  {row['kind']:<8} {row['name']:<{width}} {row['state']:<8} {detail}")


def _nic_address(nic: dict[str, Any], guest: dict[str, str]) -> str:
    """A NIC's address as `show` prints it: the lease (confirmed by the guest when it says
    the same), else the reserved address without a lease yet, else none."""
    if nic["ip"]:
        return str(nic["ip"]) + (" (guest confirms)" if guest.get("ip") == nic["ip"] else "")
    if nic.get("reserved"):
        return f"{nic['reserved']} (reserved; no lease yet)"
    return "(no lease)"


@_app.command()
def render(
    stack: StackArg,
    host: HostOpt = None,
    show_secrets: Annotated[bool, typer.Option("--show-secrets", help="Print passwords in clear.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Print the exact libvirt XML (and cloud-init files) that apply would define."""
    from virtplan.model import VM, Network, Pool, Volume

    set_debug(debug)
    with open_engine(stack, host) as engine:
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


_whole = threading.Lock()
_registered = False


def whole_app() -> typer.Typer:
    """The app with every command: those of `virtplan.cli.commands` are registered once,
    on the first call (importing them costs a command defined here 5 ms)."""
    global _registered
    with _whole:
        if not _registered:
            from virtplan.cli.commands import register_all

            register_all(_app)
            _registered = True
    return _app


def __getattr__(name: str) -> Any:
    if name == "app":
        return whole_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _command_tree(argv: list[str]) -> Any:
    """The click command tree of the app; for `virtplan COMMAND ...`, only that command's branch.

    typer builds a command by reading its function's signature and evaluating its
    annotations, some milliseconds per command; a command line runs one of them."""
    import copy

    name = argv[0] if argv else ""
    chosen = [c for c in _app.registered_commands if _command_name(c) == name]
    if len(chosen) != 1:  # not one of this module's: the commands of virtplan.cli.commands too
        chosen = [c for c in whole_app().registered_commands if _command_name(c) == name]
    if len(chosen) != 1:  # help, a group (snapshot, stack), a typo: the whole tree says what there is
        return typer.main.get_command(_app)
    branch = copy.copy(_app)  # the same settings and root options
    branch.registered_commands, branch.registered_groups = chosen, []
    return typer.main.get_command(branch)


def _command_name(info: Any) -> str:
    return str(info.name or typer.main.get_command_name(getattr(info.callback, "__name__", "")))


def invoke() -> int | None:
    """Parse the command line and run the command it names; its exit code."""
    from virtplan.cli.helptext import tidy

    command = tidy(_command_tree(sys.argv[1:]))
    try:
        return command.main(prog_name="virtplan", standalone_mode=False)  # type: ignore[no-any-return]
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        raise Aborted from None


def main() -> None:
    """Console-script entry point: run the app, turning errors into one-line messages."""
    run(invoke)
