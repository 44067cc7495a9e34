"""Every producer of specs makes exactly the fields `virtplan.documents.specs` types:
the parsers, the fast desired specs, and observe (which adds only the runtime fields)."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest
from test_fastspec import renderers

from virtplan.documents import fastspec, parse, specs
from virtplan.hosts.observe import observe_host
from virtplan.plan.planner import rendered_spec

KIND_TYPES: dict[str, Any] = {
    "vm": specs.VMSpec,
    "network": specs.NetworkSpec,
    "pool": specs.PoolSpec,
    "volume": specs.VolumeSpec,
    "snapshot": specs.SnapshotSpec,
}
NESTED: dict[str, Any] = {
    "disks": specs.DiskSpec,
    "nics": specs.NicSpec,
    "graphics": specs.GraphicsSpec,
    "reservations": specs.ReservationSpec,
}


def shape_errors(spec: dict[str, Any], typed: Any, runtime: bool = False) -> list[str]:
    """How `spec` strays from the TypedDict `typed` (runtime fields allowed only if `runtime`)."""
    allowed = typed.__required_keys__ | (typed.__optional_keys__ if runtime else set())
    errors = [f"missing {k}" for k in sorted(typed.__required_keys__ - spec.keys())]
    errors += [f"unexpected {k}" for k in sorted(spec.keys() - allowed)]
    for name, inner in NESTED.items():
        value = spec.get(name)
        for item in value if isinstance(value, list) else [value] if isinstance(value, dict) else []:
            errors += [f"{name}: {e}" for e in shape_errors(item, inner)]
    return errors


def test_the_typed_fields_are_the_runtime_fields_or_the_persistent_ones():
    assert specs.VMSpec.__optional_keys__ == {"state", "autostart", "unplugged"}
    assert specs.NetworkSpec.__optional_keys__ == specs.PoolSpec.__optional_keys__ == {"active", "autostart"}
    assert "cmdline" in specs.VMSpec.__required_keys__
    assert shape_errors({"memory": True, "state": "running"}, specs.SnapshotSpec) == ["unexpected state"]


@pytest.mark.parametrize(("name", "renderer"), list(renderers()), ids=lambda x: x if isinstance(x, str) else "")
def test_parsers_and_fast_specs_make_exactly_the_typed_fields(name, renderer):
    seen = set()
    for resource in renderer.stack.managed():
        typed = KIND_TYPES[resource.kind]
        assert shape_errors(fastspec.desired(resource, renderer), typed) == [], resource.address
        if resource.kind != "snapshot":
            assert shape_errors(rendered_spec(resource, renderer), typed) == [], resource.address
        seen.add(resource.kind)
    assert {"vm", "network", "pool", "volume"} <= seen


def test_observe_adds_only_the_runtime_fields():
    conn = libvirt.open("test:///default")
    try:
        state = observe_host(conn, "h", "test:///default", {"vm": {"test"}, "pool": {"default-pool"}}, "t")
    finally:
        conn.close()
    kinds = set()
    for obj in state.objects.values():
        typed = KIND_TYPES[obj.kind]
        assert shape_errors(obj.spec, typed, runtime=True) == [], obj.key
        assert typed.__optional_keys__ <= obj.spec.keys(), f"{obj.key}: runtime fields filled in"
        kinds.add(obj.kind)
    assert {"vm", "network", "pool"} <= kinds


def test_the_generic_parse_is_the_typed_parser():
    xml = "<pool type='dir'><name>p</name><target><path>/srv/p</path></target></pool>"
    assert parse.parse("pool", xml) == {"type": "dir", "path": "/srv/p"}
    assert parse.PARSERS["pool"] is parse.parse_pool
