"""`virtplan plan`, a plain function: typer parses its options (`virtplan.cli.app`), and
`virtplan plan FILE` without any calls it directly (`virtplan.cli.running.direct`), so that
the most frequent command does not import a command-line library.
"""

from __future__ import annotations

import sys
from pathlib import Path

from virtplan.cli.options import check_format, open_engine, set_debug, unreachable
from virtplan.cli.output import print_plan

PLAN_FORMATS = ("text", "json", "markdown")


def plan(
    stack: Path,
    host: list[str] | None = None,
    format: str = "text",
    out: Path | None = None,
    commands: bool = False,
    detailed_exitcode: bool = False,
    target: list[str] | None = None,
    replace: list[str] | None = None,
    keep_going: bool = False,
    debug: bool = False,
) -> None:
    """Show what apply would change, and why. Changes nothing."""
    set_debug(debug)
    check_format(format, PLAN_FORMATS)
    with open_engine(stack, host, connect_early=True) as engine:
        the_plan, observation = engine.plan(
            observation=engine.observe(keep_going=keep_going), targets=target, replace=replace
        )
        missing = observation.unreachable
        unsaved = bool(missing and out is not None)
        if unsaved:
            out = None  # a plan without some hosts is for reading, never for applying
        report = engine.drift(observation)
        cmds = None
        if commands:
            from virtplan.views.virsh import plan_commands

            cmds = plan_commands(the_plan, engine.stack, observation.renderer, observation.hosts, engine.store)
        doc = None
        if out is not None or format != "text":
            from virtplan.plan.planfile import plan_document

            doc = plan_document(the_plan, engine.stack, observation.hosts, engine.store, stack,
                                drift=report.to_list(), commands=cmds,
                                unbound_hosts=set(the_plan.hosts) - set(observation.renderer.keys))  # fmt: skip
            if missing:
                doc["unreachable"] = dict(missing)  # these hosts' changes are not in it
    if out is not None and doc is not None:
        from virtplan.plan.planfile import write_plan

        write_plan(doc, out)
    if format == "json" and doc is not None:
        from virtplan.plan.planfile import dumps

        print(dumps(doc), end="")
    elif format == "markdown" and doc is not None:
        from virtplan.views.graph import mermaid, stack_graph
        from virtplan.views.markdown import plan_markdown

        print(plan_markdown(doc, mermaid(stack_graph(engine.stack, the_plan))), end="")
    else:
        print_plan(the_plan, report)
        if cmds is not None:
            from virtplan.views.virsh import script

            print()
            print(script(the_plan, cmds))
    if out is not None:
        where = sys.stdout if format == "text" else sys.stderr
        print(f"Saved the plan to {out}; `virtplan apply {out}` applies exactly it.", file=where)
    if missing:
        unreachable(missing)
        n = len(missing)
        print(f"error: {n} host{'s' if n > 1 else ''} could not be read and {'are' if n > 1 else 'is'} not planned "
              "(nor VMs that may be placed there); the plan shown is the other hosts'"
              + ("; it was not saved" if unsaved else ""), file=sys.stderr)  # fmt: skip
        sys.exit(1)
    if detailed_exitcode and not the_plan.empty:
        sys.exit(2)
