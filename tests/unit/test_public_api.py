"""The public API is pinned: a name added to or dropped from `virtplan.__all__` is a
deliberate change that updates this list (and the README)."""

from __future__ import annotations

import virtplan

PUBLIC = [
    "NIC", "VM", "CloudInit", "Disk", "Graphics", "Host", "Network", "Placement", "Pool", "Secret", "Snapshot", "Stack",
    "Volume", "__version__", "current_stack", "load_stack", "name_stack", "use_templates",
]  # fmt: skip


def test_all_is_pinned() -> None:
    assert sorted(virtplan.__all__) == sorted(PUBLIC)


def test_every_public_name_exists_and_is_documented() -> None:
    for name in PUBLIC:
        value = getattr(virtplan, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), f"virtplan.{name} has no docstring"


def test_version_is_a_string() -> None:
    assert isinstance(virtplan.__version__, str) and virtplan.__version__.count(".") == 2
