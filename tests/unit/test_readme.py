"""Every Python example in README.md is a stack program that loads and validates."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from virtplan.model import load_stack

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert BLOCKS, "the README's stack tour is gone"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_is_a_valid_stack(index, tmp_path):
    program = tmp_path / "example.py"
    program.write_text(BLOCKS[index])
    for image in re.findall(r'source="([^"]+)"', BLOCKS[index]):  # images it uploads, relative to the stack
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / image), "1G"], check=True)
    stack = load_stack(program)
    assert stack.managed(), "an example that declares nothing"
    for vol in stack.volumes:
        if vol.source:
            assert Path(vol.source).is_absolute() and Path(vol.source).is_relative_to(tmp_path)
