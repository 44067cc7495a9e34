"""A command imports what it needs: a no-op `virtplan plan` pays for neither the apply
machinery nor the libraries only printing or rendering needs (speed is measured in bench/,
this only pins what gets imported)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import atexit, json, sys
atexit.register(lambda: print("MODULES " + json.dumps(sorted(sys.modules)), file=sys.stderr))
sys.argv = ["virtplan", *sys.argv[1:]]
from virtplan.cli import main
main()
"""


def _modules(tmp_path: Path, *args: str) -> tuple[set[str], str]:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})  # fmt: skip
    line = next(x for x in proc.stderr.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line.removeprefix("MODULES "))), proc.stdout


def test_a_no_op_plan_imports_no_apply_machinery_rendering_or_styling(tmp_path):
    (tmp_path / "empty.py").write_text('from virtplan import Host\nHost("local", "test:///default")\n')
    modules, out = _modules(tmp_path, "plan", "empty.py")
    assert "No changes." in out
    assert "virtplan.engine" in modules  # it did plan
    heavy_modules = (
        "pydantic",
        "rich",
        "jinja2",
        "virtplan.apply.executor",
        "virtplan.hosts.locks",
        "concurrent",
        "logging",
        "virtplan.cli.commands",  # the commands defined elsewhere than cli/app.py
        "html",
        "datetime",  # only a command that writes records stamps them
    )
    for heavy in heavy_modules:
        assert not any(m == heavy or m.startswith(heavy + ".") for m in modules), heavy


def test_plan_of_a_file_alone_runs_without_the_command_line_parser_and_says_the_same(tmp_path):
    (tmp_path / "empty.py").write_text('from virtplan import Host\nHost("local", "test:///default")\n')
    direct, out = _modules(tmp_path, "plan", "empty.py")
    parsed, parsed_out = _modules(tmp_path, "plan", "empty.py", "--format", "text")  # an option: typer parses
    assert not any(m == "typer" or m.startswith(("typer.", "click")) for m in direct)
    assert "typer" in parsed
    assert out == parsed_out and "No changes." in out
    for args in (["plan", "missing.py"], ["plan", "missing.py", "--debug"]):  # errors: the same line, the same code
        runs = [subprocess.run([sys.executable, "-m", "virtplan.cli", *a], cwd=tmp_path, capture_output=True,
                               text=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                               "PYTHONPATH": str(REPO)})
                for a in (args, [*args, "--format", "text"])]  # fmt: skip
        assert runs[0].returncode == runs[1].returncode == 1
        assert (
            runs[0].stderr.splitlines()[-1]
            == runs[1].stderr.splitlines()[-1]
            == "error: stack file missing.py not found"
        )


INTERRUPTED_PLAN = """
import functools, sys
import virtplan.cli.planning as planning

@functools.wraps(planning.plan)  # (its signature, which typer reads)
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
planning.plan = interrupted
sys.argv = ["virtplan", *sys.argv[1:]]
from virtplan.cli import main
main()
"""


def test_ctrl_c_in_a_plan_ends_it_alike_with_or_without_the_parser(tmp_path):
    runs = [
        subprocess.run([sys.executable, "-c", INTERRUPTED_PLAN, *args], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})
        for args in (["plan", "x.py"], ["plan", "x.py", "--format", "text"])
    ]  # fmt: skip
    assert [r.returncode for r in runs] == [130, 130]  # the shell's code for an interrupt
    assert runs[0].stderr == runs[1].stderr == ""


def test_version_reports_versions_without_loading_the_engine(tmp_path):
    modules, out = _modules(tmp_path, "--version")
    assert out.startswith("virtplan ") and "libvirt library" in out  # what a bug report needs
    assert "virtplan.engine" not in modules and "virtplan.plan.planner" not in modules


def test_a_command_of_the_commands_package_and_help_see_every_command(tmp_path):
    modules, out = _modules(tmp_path, "validate", "--help")
    assert "virtplan.cli.commands.validate" in modules and "Usage: virtplan validate" in out
    _, out = _modules(tmp_path, "--help")
    for name in ("plan", "apply", "validate", "snapshot", "clone", "console-log"):
        assert f"  {name} " in out, name
