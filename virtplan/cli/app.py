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

from virtplan.cli.options import (
    DebugOpt,
    HostOpt,
    LockTimeoutOpt,
    Settings,
    StackArg,
    check_format,
    open_engine,
    set_debug,
)
from virtplan.cli.output import applied, apply_with_progress, confirm, console, print_notes, print_plan
from virtplan.errors import StackLoadError, VirtplanError

app = typer.Typer(
    no_args_is_help=True,
    help="Infrastructure as code for libvirt: plan, review, apply.\n\n"
    "Shell completion for bash, zsh and fish: `virtplan --install-completion` adds it to your shell's "
    "start-up file; `virtplan --show-completion` prints the script instead.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: no type labels, no boxes, no rich import for --help
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_text() -> str:
    """virtplan's version and what it runs on, for --version and bug reports."""
    import platform
    from importlib import metadata

    from virtplan._version import __version__

    parts = [f"Python {platform.python_version()}"]
    for dist in ("libvirt-python", "typer"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} missing")
    try:
        import libvirt

        major, rest = divmod(libvirt.getVersion(), 1_000_000)
        parts.append(f"libvirt library {major}.{rest // 1000}.{rest % 1000}")
    except Exception:  # a broken libvirt install must not break --version
        pass
    return f"virtplan {__version__} ({', '.join(parts)})"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", is_eager=True, callback=_show_version,
                     help="Print virtplan's version (and Python's, libvirt's) and exit."),
    ] = False,
) -> None:  # fmt: skip
    """The options of `virtplan` itself (the commands have their own)."""


FormatOpt = Annotated[str, typer.Option("--format", help="text, json or markdown")]
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
    set_debug(debug)
    check_format(format, PLAN_FORMATS)
    with open_engine(stack, host) as engine:
        the_plan, observation = engine.plan()
        report = engine.drift(observation)
        cmds = None
        if commands:
            from virtplan.views.virsh import plan_commands

            cmds = plan_commands(the_plan, engine.stack, observation.renderer, observation.hosts, engine.store)
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
        print_plan(the_plan, report)
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
    set_debug(debug)
    from virtplan.plan.planfile import looks_like_plan_file

    if stack.suffix == ".json" or looks_like_plan_file(stack):
        if host:
            raise StackLoadError("--host cannot change a saved plan: it is applied to the hosts it was made for")
        _apply_saved(stack, allow_destroy, lock_timeout)
        return
    _converge(stack, host, yes, allow_destroy, destroy=False, lock_timeout=lock_timeout)


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
    set_debug(debug)
    _converge(stack, host, yes, allow_destroy, destroy=True, lock_timeout=lock_timeout)


def _converge(stack: Path, host: list[str] | None, yes: bool, allow_destroy: bool, destroy: bool,
              lock_timeout: float) -> None:  # fmt: skip
    with open_engine(stack, host) as engine, engine.locked(lock_timeout) as notes:
        print_notes(notes)
        the_plan, observation = engine.plan(destroy=destroy)
        print_plan(the_plan, None if destroy else engine.drift(observation))
        if not the_plan.empty:
            confirm(the_plan, yes, allow_destroy)
            report = apply_with_progress(engine, the_plan, observation)
        else:
            engine.apply(the_plan, observation)  # bookkeeping only
    if not the_plan.empty:
        applied(report)


def _apply_saved(path: Path, allow_destroy: bool, lock_timeout: float) -> None:
    """Apply a saved plan: refuse if stale, else apply exactly its changes (no prompt:
    the plan was reviewed; destructive changes still need --allow-destroy)."""
    from virtplan.engine import load_saved_plan, require_allowed

    doc, engine = load_saved_plan(path)
    console().print(f"Applying the saved plan {path} (stack {doc['stack']}, made {doc.get('created_at', '?')}).")
    with engine, engine.locked(lock_timeout) as notes:
        print_notes(notes)
        the_plan, observation = engine.plan_saved(doc)
        print_plan(the_plan)
        if not the_plan.empty:
            require_allowed(the_plan, allow_destroy, "Re-run with --allow-destroy.")
        report = apply_with_progress(engine, the_plan, observation) if the_plan.changes else None
        if report is None:
            engine.apply(the_plan, observation)  # bookkeeping only
    if report is not None:
        applied(report)


@app.command()
def show(
    stack: StackArg,
    host: HostOpt = None,
    format: Annotated[str, typer.Option("--format", help="text or json")] = "text",
    debug: DebugOpt = False,
) -> None:
    """What is deployed: per host, each owned object, its state, MACs and IPs."""
    from virtplan.units import format_size

    set_debug(debug)
    check_format(format, ("text", "json"))
    with open_engine(stack, host) as engine:
        rows = engine.inventory()
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


@app.command()
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


def _register_command_modules() -> None:
    from virtplan.cli.commands import register_all

    register_all(app)


_register_command_modules()


def main() -> None:
    """Console-script entry point: run the app, turning errors into one-line messages."""
    try:
        from virtplan.cli.helptext import tidy

        command = tidy(typer.main.get_command(app))
        rc = command.main(prog_name="virtplan", standalone_mode=False)  # the code of typer.Exit in this mode
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
        _fail(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback; "
              "please report it with the output of `virtplan --version`)", exc)  # fmt: skip


def _fail(message: str, exc: BaseException) -> None:
    if Settings.debug:
        traceback.print_exception(exc)
        print(version_text(), file=sys.stderr)  # what a bug report needs
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)
