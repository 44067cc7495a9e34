"""The folders are the architecture: each layer imports only the layers below it.

    errors, units, _version, cache  <  model  <  documents  <  hosts  <  plan  <  apply  <  engine
        <  views  <  workflows  <  cli, pulumi, testing

Every import counts, also those inside functions and under TYPE_CHECKING, and the modules
of the package import one another without cycles. `virtplan_lab` (test bed, probe guest,
demo) may use virtplan; virtplan never imports it.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

import virtplan

PACKAGE = Path(virtplan.__file__).parent

#: (layer, rank): a module may import modules of a lower rank and of its own layer only.
LAYERS = {
    "virtplan.errors": 0, "virtplan.units": 0, "virtplan._version": 0, "virtplan.cache": 0,
    "virtplan.model": 1,
    "virtplan.documents": 2,
    "virtplan.hosts": 3,
    "virtplan.plan": 4,
    "virtplan.apply": 5,
    "virtplan.engine": 6,
    "virtplan.views": 7,
    "virtplan.workflows": 8,
    "virtplan.cli": 9, "virtplan.pulumi": 9, "virtplan.testing": 9,
    "virtplan": 10,  # the package's own __init__: the public facade
}  # fmt: skip


def layer_of(module: str) -> str:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in LAYERS and (candidate != "virtplan" or module == "virtplan"):
            return candidate
    raise AssertionError(f"{module} is in no layer; add its folder to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, under TYPE_CHECKING) for every virtplan import in a file."""
    tree = ast.parse(path.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                guarded.add(id(inner))
    out = []
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [base]
            # `from virtplan.x import y` where y is a submodule
            names += [
                f"{base}.{a.name}"
                for a in node.names
                if (PACKAGE.parent / f"{base}.{a.name}".replace(".", "/")).with_suffix(".py").exists()
            ]
        else:
            continue
        for name in names:
            if name == "virtplan" or name.startswith(("virtplan.", "virtplan_lab")):
                out.append((name, node.lineno, id(node) in guarded))
    return out


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def test_every_module_is_in_a_layer() -> None:
    for name in all_modules():
        layer_of(name)


@pytest.mark.parametrize("module", sorted(all_modules()))
def test_imports_only_lower_layers(module: str) -> None:
    path = all_modules()[module]
    mine = layer_of(module)
    problems = []
    for imported, line, _ in imports(path):
        if imported.startswith("virtplan_lab"):
            problems.append(f"line {line}: imports {imported} (lab tooling is not part of virtplan)")
            continue
        theirs = layer_of(imported)
        if theirs == mine:
            continue
        if LAYERS[theirs] >= LAYERS[mine]:
            problems.append(f"line {line}: {mine} (rank {LAYERS[mine]}) imports {imported} (rank {LAYERS[theirs]})")
    assert not problems, f"{path.relative_to(PACKAGE.parent)}:\n" + "\n".join(problems)


def test_no_import_cycles() -> None:
    modules = all_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for imported, _, guarded in imports(path):
            if guarded:
                continue
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                deps.add(imported)
        graph[name] = deps
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        pytest.fail("import cycle: " + " -> ".join(exc.args[1]))


def test_library_imports_without_cli_pulumi_or_libvirt() -> None:
    import subprocess
    import sys

    code = (
        "import sys, virtplan, virtplan.engine, virtplan.plan.planner, virtplan.views.text\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'pulumi', 'libvirt', 'rich', 'click')"
        " or m.startswith(('virtplan.cli', 'virtplan.pulumi')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the library pulled in: {out}"
