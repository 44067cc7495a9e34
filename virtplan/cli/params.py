"""The options as typer sees them (`Annotated` with typer's parameter info), and `typed`,
which gives a plain command function these annotations. Imported with typer, when the
command line is parsed; what the options mean is in `virtplan.cli.options`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

StackArg = Annotated[Path, typer.Argument(help="Stack program, e.g. stacks/demo.py", metavar="STACK")]
HostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="Override a host's URI: NAME=URI (repeatable). VIRTPLAN_URI overrides the default host.",
        metavar="NAME=URI",
    ),
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
TargetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--target",
        help="Plan only this address (host/kind/name) and what it waits for (repeatable), as Terraform's -target. "
        "Also names an object that VMs this stack does not manage use, to delete it anyway.",
    ),
]
ReplaceOpt = Annotated[
    list[str] | None,
    typer.Option("--replace", help="Replace this declared object (host/kind/name) even if it matches (repeatable)."),
]
KeepGoingOpt = Annotated[
    bool,
    typer.Option(
        "--keep-going",
        help="Hosts that cannot be read get one error line each; the others are still shown (exit code 1).",
    ),
]
ParallelOpt = Annotated[
    int | None,
    typer.Option(
        "--parallel",
        help="Changes applied at once over all hosts (default: $VIRTPLAN_PARALLEL, else 32); "
        "each host also keeps to its own workers.",
        min=1,
    ),
]
LockTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--lock-timeout",
        help="Seconds to wait for another apply of this stack to finish (0: fail at once).",
        min=0,
    ),
]
PlanFormatOpt = Annotated[str, typer.Option("--format", help="text, json or markdown")]
PlanOutOpt = Annotated[Path | None, typer.Option("--out", help="Save the plan as JSON, to apply exactly it later.")]
CommandsOpt = Annotated[
    bool, typer.Option("--commands", help="Also give the equivalent virsh commands of each change.")
]
DetailedExitcodeOpt = Annotated[bool, typer.Option("--detailed-exitcode", help="Exit 2 when there are changes.")]


def typed(command: Callable[..., Any], **params: Any) -> Callable[..., Any]:
    """`command` as typer reads it: the same name, help, parameters and defaults, each
    parameter annotated with its typer option in `params` (one for each, no other)."""
    signature = inspect.signature(command)
    differ = set(signature.parameters) ^ set(params)
    if differ:
        raise TypeError(f"{command.__name__}: give typer options for exactly its parameters (differ: {sorted(differ)})")

    @functools.wraps(command)
    def call(*args: Any, **kwargs: Any) -> Any:
        return command(*args, **kwargs)

    parameters = [p.replace(annotation=params[p.name]) for p in signature.parameters.values()]
    call.__signature__ = signature.replace(parameters=parameters, return_annotation=None)  # type: ignore[attr-defined]
    call.__annotations__ = {**params, "return": None}
    return call
