"""A Pulumi Automation API script, as a user would write one, driving a virtplan stack program.

    python lab_automation.py STEP --work DIR --engine ROOT --program FILE [--host NAME=URI]...

STEP is one of `init`, `preview`, `up`, `refresh`, `outputs`, `destroy`; each run selects the
stack again (its state lives in the file backend under DIR) and prints one JSON object: the
operation's change counts, the warnings the engine showed (URN and message), the stack outputs.

The program is inline: the Python process running this script serves it to the engine, so no
language host is involved. The engine is `PulumiCommand(root=ROOT)`, never `.install()`.
tests/pulumi_engine/test_automation_lab.py runs it offline, in a network namespace of its own.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pulumi.automation as auto

from virtplan.pulumi.program import run

REPO = Path(__file__).resolve().parents[2]


def select(args: argparse.Namespace) -> auto.Stack:
    work = Path(args.work)
    settings = auto.ProjectSettings(
        name="virtplan",
        runtime=auto.ProjectRuntimeInfo(name="python", options={"virtualenv": sys.prefix}),
        backend=auto.ProjectBackend(url=f"file://{work / 'backend'}"),
    )
    return auto.create_or_select_stack(
        stack_name="lab",
        project_name="virtplan",
        program=lambda: run(REPO),
        opts=auto.LocalWorkspaceOptions(
            work_dir=str(work / "workspace"),
            pulumi_home=str(work / "pulumi-home"),
            pulumi_command=auto.PulumiCommand(root=args.engine),
            project_settings=settings,
            secrets_provider="passphrase",
            # Inline programs: the engine does not pass the project's virtualenv to the dynamic
            # provider plugin, so name this script's Python (it has virtplan and pulumi).
            env_vars={"PULUMI_PYTHON_CMD": sys.executable},
        ),
    )


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["init", "preview", "up", "refresh", "outputs", "destroy"])
    ap.add_argument("--work", required=True)
    ap.add_argument("--engine", required=True)
    ap.add_argument("--program", required=True)
    ap.add_argument("--host", action="append", default=[])
    args = ap.parse_args(argv)
    for folder in ("workspace", "backend", "pulumi-home"):
        (Path(args.work) / folder).mkdir(parents=True, exist_ok=True)
    stack = select(args)

    warnings: list[list[str]] = []

    def on_event(event: auto.EngineEvent) -> None:
        diag = event.diagnostic_event
        if diag is not None and diag.severity == "warning":
            warnings.append([diag.urn or "", diag.message.strip()])

    result: dict[str, Any] = {"step": args.step}
    if args.step == "init":
        stack.set_config("virtplan:program", auto.ConfigValue(args.program))
        stack.set_config("virtplan:parallelism", auto.ConfigValue("2"))
        for i, item in enumerate(args.host):
            stack.set_config(f"virtplan:hosts[{i}]", auto.ConfigValue(item), path=True)
        result["config"] = {k: v.value for k, v in stack.get_all_config().items()}
    elif args.step == "preview":
        preview = stack.preview(diff=True, on_event=on_event)
        result["changes"] = {str(k): v for k, v in preview.change_summary.items()}
        result["stdout"] = preview.stdout
    elif args.step == "up":
        up = stack.up(on_event=on_event)
        result["changes"] = up.summary.resource_changes
        result["stdout"] = up.stdout
    elif args.step == "refresh":
        refresh = stack.refresh(on_event=on_event)
        result["changes"] = refresh.summary.resource_changes
    elif args.step == "destroy":
        destroy = stack.destroy(on_event=on_event)
        result["changes"] = destroy.summary.resource_changes
    result["warnings"] = warnings
    result["outputs"] = {k: {"value": v.value, "secret": v.secret} for k, v in stack.outputs().items()}
    return result


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
