"""Fixtures for the Pulumi program under the SDK's mocks.

Gotchas handled here (see FACTS.md): `set_mocks` and `set_all_config` are called afresh by
every `run_program` call (config leaks between tests otherwise); the program is run from
the repository's real `__main__.py` inside the test body; assertions go through `checks`,
which runs them inside `apply` and fails the test at teardown if any of them never ran.
"""

from __future__ import annotations

import json
import runpy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs, Mocks

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DYNAMIC = "pulumi-python:dynamic/virtplan:"
SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key


def is_secret(value: Any) -> bool:
    """True for a value the program sent as a Pulumi secret."""
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    """The value with every secret wrapper removed (recursively)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Registration:
    """One RegisterResource call as the engine would receive it."""

    type: str
    name: str
    urn: str
    inputs: dict[str, Any]  # secrets still wrapped
    dependencies: list[str]
    provider: str
    delete_before_replace: bool
    additional_secret_outputs: list[str]

    @property
    def plain(self) -> dict[str, Any]:
        return unwrap(self.inputs)


class FakeEngine(Mocks):
    """Answers registrations like the providers would: id, inputs echoed, computed outputs."""

    def new_resource(self, args: MockResourceArgs) -> tuple[str, dict[str, Any]]:
        plain = unwrap(args.inputs)
        if args.typ.startswith(DYNAMIC):
            kind = args.typ[len(DYNAMIC) :].lower()
            host = plain["host"]["name"]
            key = f"{plain['pool']['name']}/{plain['name']}" if kind == "volume" else plain["name"]
            address = f"{host}/{kind}/{key}"
            outs = {**args.inputs, "address": address, "observed": {}}
            if kind in ("vm", "network", "pool"):
                outs["uuid"] = f"uuid-{address}"
            if kind == "vm":
                nics = plain.get("nics") or []
                outs["macAddresses"] = [n.get("mac") or f"52:54:00:00:00:{i:02x}" for i, n in enumerate(nics)]
                outs["ipAddresses"] = [n.get("ip") for n in nics]
            return address, outs
        if args.typ.startswith("pulumi:providers:"):
            return f"provider-{args.name}", dict(args.inputs)
        return f"id-{args.name}", dict(args.inputs)

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None


class RecordingMonitor(MockMonitor):
    """The SDK's mock monitor, also keeping each registration's raw request fields."""

    def __init__(self, mocks: Mocks):
        super().__init__(mocks)
        self.registrations: list[Registration] = []

    def RegisterResource(self, request: Any) -> Any:
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.registrations.append(
                Registration(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    inputs=rpc.deserialize_properties(request.object),
                    dependencies=list(request.dependencies),
                    provider=request.provider,
                    delete_before_replace=request.deleteBeforeReplace,
                    additional_secret_outputs=list(request.additionalSecretOutputs),
                )
            )
        return response


@dataclass
class ProgramRun:
    """The result of running `__main__.py`: what it returned and what it registered."""

    namespace: dict[str, Any]
    monitor: RecordingMonitor
    registered: Any = None

    def settled(self, check: Callable[[], None]) -> pulumi.Output[Any]:
        """An output that runs `check` once every resource the program declared is registered."""
        urns = [r.urn for r in self.registered.resources.values()]
        return pulumi.Output.all(*urns).apply(lambda _: check())

    def all(self, type_prefix: str = "") -> list[Registration]:
        return [r for r in self.monitor.registrations if r.type.startswith(type_prefix)]

    def one(self, type_: str, name: str) -> Registration:
        found = [r for r in self.monitor.registrations if r.type == type_ and r.name == name]
        assert len(found) == 1, f"{type_} {name}: {len(found)} registrations"
        return found[0]

    def urn(self, type_: str, name: str) -> str:
        return self.one(type_, name).urn


def run_program(
    config: dict[str, Any], stack: str = "demo", preview: bool = False, main: Path = REPO / "__main__.py"
) -> ProgramRun:
    """Run the real Pulumi program with fresh mocks and exactly `config` (call inside a test body)."""
    mocks = FakeEngine()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="virtplan", stack=stack, preview=preview, monitor=monitor)
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}, secret_keys=[]
    )
    run = ProgramRun({}, monitor)
    # The real entry point, re-run per test: run_path executes it afresh every time.
    run.namespace = runpy.run_path(str(main), run_name="__main__")
    run.registered = run.namespace["registered"]
    return run


@pytest.fixture
def program() -> Callable[..., ProgramRun]:
    """run_program(config, stack=..., preview=...) -> ProgramRun."""
    return run_program


@dataclass
class Checks:
    """Assertions run inside `apply`; teardown fails the test if any of them never ran."""

    registered: list[str] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)

    def on(self, value: Any, check: Callable[[Any], None], label: str = "") -> pulumi.Output[Any]:
        name = label or f"check {len(self.registered) + 1}"
        self.registered.append(name)

        def run(resolved: Any) -> Any:
            check(resolved)
            self.ran.append(name)
            return resolved

        return pulumi.Output.from_input(value).apply(run)

    def unrun(self) -> list[str]:
        return [n for n in self.registered if n not in self.ran]

    def all(self, *outputs: pulumi.Output[Any]) -> pulumi.Output[Any]:
        return pulumi.Output.all(*outputs)


@pytest.fixture
def checks() -> Iterator[Checks]:
    """Apply-time assertions that cannot be skipped silently."""
    c = Checks()
    yield c
    assert not c.unrun(), f"apply-time assertions that never ran: {c.unrun()}"


@pytest.fixture
def new_checks() -> Callable[[], Checks]:
    """A factory of Checks not verified at teardown (for tests of the harness itself)."""
    return Checks
