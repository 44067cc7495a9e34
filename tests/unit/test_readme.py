"""README.md is checked as it is read: every Python example is a stack program that loads and
validates, and every link within it reaches one of its headings."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from virtplan.errors import ValidationError
from virtplan.model import load_stack

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert BLOCKS, "the README's stack tour is gone"


#: The first stack's placeholder: the reader pastes the image's checksum there.
PLACEHOLDER = re.compile(r'sha512="(PASTE-[^"]+)"')


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_is_a_valid_stack(index, tmp_path):
    program = tmp_path / "example.py"
    text = BLOCKS[index]
    placeholder = PLACEHOLDER.search(text)
    if placeholder:  # as written, validation says exactly what to paste; pasted, it is valid
        program.write_text(text)
        with pytest.raises(ValidationError) as err:
            load_stack(program)
        assert len(err.value.errors) == 1 and "sha512: must be 128 hexadecimal digits" in str(err.value)
        text = text.replace(placeholder.group(1), "0" * 128)
    program.write_text(text)
    for image in re.findall(r'source="([^"]+)"', text):  # images it uploads, relative to the stack
        if image.startswith("https://"):
            continue  # downloaded when applied; validation fetches nothing
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp_path / image), "1G"], check=True)
    stack = load_stack(program)
    assert stack.managed(), "an example that declares nothing"
    for vol in stack.volumes:
        if vol.source and not vol.source.startswith("https://"):
            assert Path(vol.source).is_absolute() and Path(vol.source).is_relative_to(tmp_path)


def test_install_section_names_what_libvirt_python_needs_to_build():
    """The README's Install section and scripts/setup.sh agree on the Debian packages that
    compile libvirt-python."""
    install = README.read_text().split("## Install", 1)[1].split("\n## ", 1)[0]
    setup = (README.parent / "scripts" / "setup.sh").read_text()
    build = re.search(r"^\s*(.*?)\s*# to compile libvirt-python", setup, flags=re.M)
    assert build is not None
    for package in build.group(1).split():
        assert package in install, f"{package} (scripts/setup.sh) is missing from the README's Install section"
    assert "pipx install" in install and "pip install" in install


def test_every_link_within_the_readme_reaches_a_heading():
    """A `[text](#anchor)` names a heading that exists (GitHub's anchors: lower case,
    punctuation dropped, spaces as hyphens); a section removed by mistake breaks one."""

    def anchor(heading: str) -> str:
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    text = README.read_text()
    headings = {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}
    links = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert links, "the README links none of its sections"
    assert sorted(links - headings) == []
