"""The fast desired specs equal what the built-in templates render, parsed back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from builders import QEMU_FACTS
from test_render import lab_stack

from virtplan.documents import fastspec
from virtplan.documents.render import Renderer
from virtplan.model import load_stack
from virtplan.plan.planner import rendered_spec

STACKS = Path(__file__).resolve().parents[2] / "stacks"
FAST = {
    "vm": fastspec.desired_domain,
    "network": fastspec.desired_network,
    "pool": fastspec.desired_pool,
    "volume": fastspec.desired_volume,
}


def renderers():
    stack, r = lab_stack()
    yield "golden", r
    for path in sorted(STACKS.glob("*.py")):
        image = Path(f"/tmp/virtplan-fastspec-image-{os.getpid()}.qcow2")  # one per xdist worker
        image.write_bytes(b"QFI\xfb" + b"\0" * 20 + (64 * 1024**2).to_bytes(8, "big") + b"\0" * 100)
        os.environ["VIRTPLAN_LAB_IMAGE"] = str(image)
        stack = load_stack(path)
        yield path.name, Renderer(stack, {h.name: QEMU_FACTS for h in stack.hosts})


@pytest.mark.parametrize(("name", "renderer"), list(renderers()), ids=lambda x: x if isinstance(x, str) else "")
def test_fast_spec_equals_render_then_parse(name, renderer):
    checked = 0
    for resource in renderer.stack.managed():
        assert FAST[resource.kind](resource, renderer) == rendered_spec(resource, renderer), resource.address
        checked += 1
    assert checked >= 4
