"""The mock harness cannot pass vacuously: apply-time assertions run, and skipped ones fail."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest


def test_a_false_assertion_inside_apply_fails_the_test(program: Any, new_checks: Any, monkeypatch: Any) -> None:
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    checks = new_checks()

    @pulumi.runtime.test
    def wrong_expectation() -> pulumi.Output:
        run = program({}, stack="demo")
        vm = run.registered.resources["local/vm/demo-1"]

        def check(memory: Any) -> None:
            assert memory == "999GiB", memory

        return checks.on(vm.memory, check, "memory")

    with pytest.raises(AssertionError, match="128MiB"):
        wrong_expectation()
    assert checks.unrun() == ["memory"]  # it ran and failed: "ran" is recorded only on success


def test_an_assertion_that_never_runs_is_reported(program: Any, new_checks: Any, monkeypatch: Any) -> None:
    """Without @pulumi.runtime.test nothing awaits the outputs, so the callback never runs:
    the `checks` fixture's teardown turns exactly this into a failure."""
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    checks = new_checks()
    run = program({}, stack="demo")  # not under @pulumi.runtime.test
    vm = run.registered.resources["local/vm/demo-1"]

    def check(_: Any) -> None:
        raise AssertionError("would fail, but is never called")

    checks.on(vm.memory, check, "never awaited")
    assert checks.unrun() == ["never awaited"]
