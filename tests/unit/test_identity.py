"""Stack identity: what a stack program declares about itself, and where the project comes from."""

from pathlib import Path

import pytest

from virtplan import load_stack
from virtplan.errors import StackLoadError


def _stack(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "stacks" / "web.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("from virtplan import VM, name_stack\n" + body + 'VM("a", memory="32MiB")\n')
    return path


def test_the_file_stem_names_a_stack_that_does_not_name_itself(tmp_path):
    stack = load_stack(_stack(tmp_path, ""), {"local": "test:///default"})
    assert (stack.name, stack.project) == ("web", "")


def test_a_declared_name_and_project_win_over_the_file(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.virtplan]\nproject = "acme"\n')
    stack = load_stack(_stack(tmp_path, 'name_stack("shop")\n'), {"local": "test:///default"})
    assert (stack.name, stack.key) == ("shop", "acme/shop")


def test_naming_a_stack_twice_is_refused_rather_than_letting_the_last_call_win(tmp_path):
    with pytest.raises(StackLoadError, match="name_stack\\(\\) is called twice"):
        load_stack(_stack(tmp_path, 'name_stack("a")\nname_stack("b")\n'), {"local": "test:///default"})
