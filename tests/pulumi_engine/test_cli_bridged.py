"""The pulumi-libvirt backend under the real engine: what happens without its plugin.

`pulumi-resource-libvirt` cannot be built from the module proxy here (tools/pulumi/README.md
has the commands and answers), so a stack the backend can express stops at the engine's own
"no resource plugin" error, offline (no download is attempted), and nothing is created. A stack
it cannot express stops earlier, in the program, with virtplan's list of reasons. Neither case
needs a host.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from engine_support import REPO, Project


def bridged_project(tmp_path: Path, program: Path | None) -> Project:
    project = Project(tmp_path / "project", tmp_path, passphrase="bridged")
    project.run("stack", "init", "bridged")
    project.run("config", "set", "virtplan:backend", "pulumi-libvirt")
    if program is not None:
        shutil.copy(program, project.root / "stacks" / program.name)
        project.run("config", "set", "virtplan:program", f"stacks/{program.name}")
    return project


def test_an_expressible_stack_needs_the_missing_plugin(pulumi_bin: Path, tmp_path: Path) -> None:
    project = bridged_project(tmp_path, REPO / "tests" / "pulumi" / "stacks" / "bridgeable.py")
    preview = project.run("preview", check=False)
    assert preview.returncode != 0
    assert "pulumi:providers:libvirt (lab):" in preview.text
    assert (
        "error: no resource plugin 'pulumi-resource-libvirt' found in the workspace at version v0.5.4 or on your $PATH"
    ) in preview.text
    assert not any((project.home / "plugins").glob("resource-libvirt*"))  # nothing was downloaded


def test_a_stack_it_cannot_express_stops_in_the_program(pulumi_bin: Path, tmp_path: Path) -> None:
    project = bridged_project(tmp_path, None)
    project.run("config", "set", "virtplan:program", "stacks/demo.py")  # max_memory, a console log
    preview = project.run("preview", check=False)
    assert preview.returncode != 0
    assert "virtplan: the pulumi-libvirt backend cannot express" in preview.text
    assert "local/vm/demo-1: max_memory" in preview.text and "nothing was registered" in preview.text
    assert "Traceback" not in preview.text  # a RunError is reported as the message alone
