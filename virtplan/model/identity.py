"""A stack's identity: its name and its project, which together tell it from every other stack.

Objects virtplan creates carry the identity of the stack that made them (in their mark or
in the records kept on the host), so the identity decides what a stack owns. It must not
depend on where a file happens to be: two unrelated stacks that share a file name must
never be taken for each other, and renaming or moving a stack file must keep its objects.

- The name: what the stack program declares with `name_stack("demo")`, else the file's
  stem (fine for a new stack; declare it before renaming the file).
- The project: declared with `name_stack(..., project="acme-lab")`, else the nearest
  `pyproject.toml` (`[tool.virtplan] project = "..."`) or `Pulumi.yaml` (`name:`) above
  the stack file, else none. A repository's stacks thus share its project in every clone.
"""

from __future__ import annotations

import re
from pathlib import Path

from virtplan.errors import StackLoadError
from virtplan.model.registry import current_stack

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


def check_identity_part(value: object, what: str) -> str:
    """A stack or project name: letters, digits, '.', '-', '_' (at most 63), or an error."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise StackLoadError(
            f"{what} {value!r} is not a valid name: use 1-63 letters, digits, '.', '-', '_' "
            "(not starting with '.' or '-')"
        )
    return value


def name_stack(name: str, *, project: str | None = None) -> None:
    """Declare the running stack program's name (and project): its identity on the hosts.

    Call it at the top of a stack program. Without it the name is the file's stem and the
    project comes from the repository (see `project_of`)."""
    stack = current_stack()
    if stack is None:
        raise StackLoadError("name_stack() can only be called from a stack program")
    if stack.declared_name:
        # A second call would silently win over the first (and over `virtplan stack rename`).
        raise StackLoadError(f"name_stack() is called twice (already named {stack.name!r}); keep one call at the top")
    stack.name = check_identity_part(name, "stack name")
    stack.declared_name = True
    if project is not None:
        stack.project = check_identity_part(project, "project")
        stack.declared_project = True


def project_of(stack_file: Path) -> str:
    """The project a stack file belongs to: the nearest pyproject.toml with [tool.virtplan]
    project, or Pulumi.yaml name, in its folder or above; "" if there is none."""
    for folder in [stack_file.parent, *stack_file.parent.parents]:
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            import tomllib

            try:
                data = tomllib.loads(pyproject.read_text())
            except (OSError, ValueError) as exc:
                raise StackLoadError(f"{pyproject}: cannot read it ({exc})") from exc
            project = data.get("tool", {}).get("virtplan", {}).get("project")
            if project is not None:
                return check_identity_part(project, f"{pyproject} [tool.virtplan] project")
        pulumi = folder / "Pulumi.yaml"
        if pulumi.is_file():
            name = _pulumi_project_name(pulumi)
            if name:
                return check_identity_part(name, f"{pulumi} name")
    return ""


def _pulumi_project_name(path: Path) -> str | None:
    """The top-level `name:` of a Pulumi.yaml (read without a YAML library)."""
    for line in path.read_text().splitlines():
        match = re.match(r"^name:\s*['\"]?([^'\"#\s]+)['\"]?\s*(#.*)?$", line)
        if match:
            return match.group(1)
    return None
