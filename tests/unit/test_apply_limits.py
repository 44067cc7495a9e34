"""Apply's concurrency: hosts in parallel, each within its workers, all within the global
limit, and a change that waits for a change on another host (the executor, with steps
replaced by operations that only record when they ran)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from builders import QEMU_FACTS, declare

from virtplan.apply import executor
from virtplan.apply.steps import Context, Operation, Runtime
from virtplan.documents.render import Renderer
from virtplan.errors import ApplyError, VirtplanError
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import StateStore
from virtplan.model import Host, Stack, validate
from virtplan.plan.changes import Action, Plan, Reason, ResourceChange


class Timeline:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, tuple[float, float]] = {}
        self.fail: set[str] = set()


class Sleep(Operation):
    def __init__(self, timeline: Timeline, address: str, seconds: float) -> None:
        self.timeline, self.address, self.seconds = timeline, address, seconds

    def run(self, rt: Runtime) -> None:
        began = time.monotonic()
        time.sleep(self.seconds)
        with self.timeline.lock:
            self.timeline.spans[self.address] = (began, time.monotonic())
        if self.address in self.timeline.fail:
            raise VirtplanError(f"{self.address} failed")

    def shell(self, ctx: Context) -> list[str]:
        return []


def stack_of(hosts: int, workers: int) -> Stack:
    with declare("limits") as stack:
        for i in range(1, hosts + 1):
            Host(f"h{i}", f"test:///h{i}", workers=workers)
    return validate(stack)


def change(host: str, name: str, *after: str) -> ResourceChange:
    return ResourceChange(f"{host}/vm/{name}", host, "vm", name, Action.CREATE, Reason.MISSING, depends_on=list(after))


def run(stack: Stack, changes: list[ResourceChange], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        limit: int | None, seconds: float = 0.2, fail: set[str] = frozenset()) -> tuple[Timeline, Any]:  # fmt: skip
    timeline = Timeline()
    timeline.fail = set(fail)

    def operations(c: ResourceChange, ctx: Context) -> Iterator[Operation]:
        yield Sleep(timeline, c.address, seconds)

    monkeypatch.setattr(executor, "operations", operations)
    observed = {h.name: HostState(h.name, h.uri, QEMU_FACTS) for h in stack.hosts}
    renderer = Renderer(stack, {h.name: QEMU_FACTS for h in stack.hosts})
    plan = Plan(stack.name, "", changes, {h.name: h.uri for h in stack.hosts})
    store = StateStore(tmp_path / "state.json", stack.name)
    conns = {h.name: object() for h in stack.hosts}
    try:
        report = executor.apply_plan(plan, stack, renderer, observed, store, conns, limit=limit)
    except ApplyError as exc:
        report = exc.report
    return timeline, report


def overlapping(timeline: Timeline) -> int:
    """The most changes that ran at the same moment."""
    edges = sorted([(b, 1) for b, _ in timeline.spans.values()] + [(e, -1) for _, e in timeline.spans.values()])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_hosts_run_in_parallel_each_within_its_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_of(4, workers=2)
    changes = [change(f"h{h}", f"vm{i}") for h in range(1, 5) for i in range(3)]
    timeline, report = run(stack, changes, tmp_path, monkeypatch, limit=None)
    assert report.ok and len(timeline.spans) == 12
    assert report.most_in_flight == 8  # 4 hosts x 2 workers, under the default global limit
    for h in range(1, 5):
        mine = Timeline()
        mine.spans = {a: s for a, s in timeline.spans.items() if a.startswith(f"h{h}/")}
        assert overlapping(mine) == 2


def test_the_global_limit_bounds_all_hosts_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_of(4, workers=4)
    changes = [change(f"h{h}", f"vm{i}") for h in range(1, 5) for i in range(4)]
    timeline, report = run(stack, changes, tmp_path, monkeypatch, limit=3, seconds=0.1)
    assert report.ok and len(timeline.spans) == 16
    assert report.most_in_flight == 3
    assert overlapping(timeline) == 3


def test_a_change_waits_for_one_on_another_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_of(2, workers=4)
    changes = [change("h1", "first"), change("h2", "second", "h1/vm/first"), change("h2", "free")]
    timeline, report = run(stack, changes, tmp_path, monkeypatch, limit=None)
    assert report.ok
    assert timeline.spans["h2/vm/second"][0] >= timeline.spans["h1/vm/first"][1]
    assert timeline.spans["h2/vm/free"][0] < timeline.spans["h1/vm/first"][1]  # the rest of h2 did not wait


def test_a_change_whose_other_host_dependency_failed_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = stack_of(2, workers=4)
    changes = [change("h1", "first"), change("h2", "second", "h1/vm/first")]
    timeline, report = run(stack, changes, tmp_path, monkeypatch, limit=None, fail={"h1/vm/first"})
    assert {o.address: o.status for o in report.outcomes} == {"h1/vm/first": "failed", "h2/vm/second": "not started"}
    assert "h2/vm/second" not in timeline.spans


def test_the_limit_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIRTPLAN_PARALLEL", "5")
    assert executor.default_limit() == 5
    monkeypatch.setenv("VIRTPLAN_PARALLEL", "0")
    with pytest.raises(VirtplanError, match=r"VIRTPLAN_PARALLEL='0': write a whole number of changes, 1 or more"):
        executor.default_limit()
    monkeypatch.delenv("VIRTPLAN_PARALLEL")
    assert executor.default_limit() == executor.DEFAULT_LIMIT == 32


def test_connections_opened_early_are_handed_over_once_or_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Opening` (commands that read every host): each host's connection is taken once, for
    its URI; one opened for another URI (a --host override) or never taken is closed."""
    from virtplan.hosts import connection

    opened: list[Any] = []

    class Conn:
        def __init__(self, uri: str) -> None:
            self.uri, self.closed = uri, False
            opened.append(self)

        def close(self) -> None:
            self.closed = True

    monkeypatch.setattr(connection, "connect", lambda uri, host="", dial=None: Conn(uri))
    early = connection.Opening([("a", "test:///a"), ("b", "test:///b"), ("c", "test:///c")])
    conn = early.take("a", "test:///a")
    assert isinstance(conn, Conn) and conn.uri == "test:///a"
    assert early.take("a", "test:///a") is None  # handed over once
    assert early.take("b", "test:///other") is None  # opened for another URI: not this one
    early.close()
    deadline = time.monotonic() + 5
    while not all(c.closed for c in opened if c.uri != "test:///a") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted((c.uri, c.closed) for c in opened) == [("test:///a", False), ("test:///b", True), ("test:///c", True)]
