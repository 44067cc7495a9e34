"""How many changes apply runs at once per host (virtplan.apply.concurrency)."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from virtplan.apply import concurrency, executor
from virtplan.apply.concurrency import AT_LEAST, AT_MOST, PER_CPU, choose, host_cpus, workers_for
from virtplan.engine import Engine
from virtplan.model import Host, Network


def test_sized_from_the_host_cpus_within_bounds() -> None:
    assert choose(2) == max(AT_LEAST, PER_CPU * 2) == 8
    assert choose(1) == AT_LEAST
    assert choose(4) == PER_CPU * 4
    assert choose(1024) == AT_MOST
    assert choose(None) == AT_LEAST  # a host that cannot tell


def test_never_more_workers_than_changes() -> None:
    assert choose(64, changes=3) == 3
    assert choose(2, changes=1) == 1
    assert choose(2, changes=0) == 1
    assert choose(2, changes=500) == choose(2)


class _NoLibvirt:
    def getInfo(self) -> Any:
        raise AssertionError("an explicit Host(workers=) needs no libvirt call")


class _NoNodeInfo:
    def getInfo(self) -> Any:
        raise libvirt.libvirtError("this function is not supported by the connection driver")


def test_an_explicit_workers_wins(build: Any) -> None:
    stack = build(lambda: Host("h", "test:///default", domain_type="qemu", workers=3))
    assert workers_for(stack.host("h"), _NoLibvirt(), changes=50) == 3


def test_a_host_without_node_info_gets_the_minimum(build: Any) -> None:
    stack = build(lambda: Host("h", "test:///default", domain_type="qemu"))
    assert stack.host("h").workers is None
    assert host_cpus(_NoNodeInfo()) is None
    assert workers_for(stack.host("h"), _NoNodeInfo(), changes=50) == AT_LEAST


def test_host_cpus_is_what_libvirt_reports() -> None:
    conn = libvirt.open("test:///default")
    try:
        assert host_cpus(conn) == conn.getInfo()[2] == 16  # the test driver's node
    finally:
        conn.close()


@pytest.mark.parametrize("declared", [None, 2])
def test_apply_uses_the_choice_per_host(build: Any, monkeypatch: pytest.MonkeyPatch, declared: int | None) -> None:
    seen: dict[str, int] = {}
    run = executor.HostApplier.run

    def spy(self: executor.HostApplier, changes: list[Any], workers: int, *rest: Any) -> Any:
        seen[self.host.name] = workers
        return run(self, changes, workers, *rest)

    monkeypatch.setattr(executor.HostApplier, "run", spy)
    asked: list[int | None] = []
    choose_ = concurrency.choose
    monkeypatch.setattr(
        concurrency,
        "choose",
        lambda cpus, changes=None, deleting=False: asked.append(changes) or choose_(cpus, changes, deleting),
    )

    def program() -> None:
        host = Host("h", "test:///default", domain_type="qemu", workers=declared)
        for i in range(5):
            Network(f"conc-{declared}-{i}", host=host, mode="isolated", cidr=f"10.{200 + i}.0.0/24")

    stack = build(program, name=f"conc{declared}")
    with Engine(stack) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
    if declared is None:
        assert asked == [5] and seen == {"h": 5}  # 16 CPUs on the test driver: bounded by the 5 changes
    else:
        assert asked == [] and seen == {"h": 2}


def test_a_host_that_only_deletes_gets_twice_the_workers_within_the_bound() -> None:
    """Deleting waits on QEMU processes exiting, not on this machine or the host's CPUs."""
    assert choose(2, deleting=True) == 2 * choose(2) == 16
    assert choose(4, deleting=True) == AT_MOST
    assert choose(2, changes=5, deleting=True) == 5
