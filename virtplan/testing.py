"""Throw-away clones of an environment for tests: a context manager and a pytest fixture.

    from virtplan.testing import cloned_environment

    with cloned_environment("stacks/lab.py", subnet_map={"10.20.1.0/24": "10.99.1.0/24"}) as env:
        env.vm("web1").name        # "t-3f9a1c-web1"
        env.ip("web1")             # "10.99.1.11" (its fixed IP, or its DHCP lease)
        ...                        # run the test against the clone
    # the clone is destroyed here, also when the test failed

With pytest, enable the fixture with ``pytest_plugins = ["virtplan.testing"]`` in a
conftest.py and ask for ``virtplan_clone``: a factory taking the same arguments; every
clone it made is destroyed when the test ends.

The clone is a linked clone (see `virtplan.workflows.clone`): taking it costs seconds whatever the
disk sizes, the source keeps running and never sees what the test writes.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtplan.workflows.clone import CloneOptions, CloneResult, clone


@dataclass
class ClonedVM:
    """One VM of a clone: its names, identity and addresses."""

    source: str
    name: str
    host: str
    uuid: str | None
    state: str
    macs: list[str]
    ips: list[str | None]  # per NIC: the fixed IP, else the DHCP lease (None if none yet)

    @property
    def ip(self) -> str | None:
        return next((ip for ip in self.ips if ip), None)


@dataclass
class ClonedEnvironment:
    """What a test needs to reach a clone."""

    name: str
    stack_file: Path
    result: CloneResult
    host_uris: dict[str, str]
    vms: dict[str, ClonedVM] = field(default_factory=dict)  # by source VM name

    def vm(self, source_name: str) -> ClonedVM:
        try:
            return self.vms[source_name]
        except KeyError:
            raise KeyError(f"the clone has no copy of VM {source_name!r} (it has: {', '.join(self.vms)})") from None

    def ip(self, source_name: str, wait: float = 0.0) -> str | None:
        """The clone VM's first address; with `wait`, poll DHCP leases up to that many seconds."""
        deadline = time.monotonic() + wait
        while True:
            found = self.vm(source_name).ip
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(0.5)
            self.refresh()

    def refresh(self) -> None:
        """Re-read the clone's VMs (states, leases)."""
        self.vms = describe(self.stack_file, self.result)


def describe(stack_file: Path, result: CloneResult) -> dict[str, ClonedVM]:
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    stack = load_stack(stack_file)
    fixed = {vm.name: [n.ip for n in vm.nics] for vm in stack.vms}
    by_clone = {clone_name: source for source, clone_name in result.vms.items()}
    out = {}
    with Engine(stack) as engine:
        observation = engine.observe()
        for row in engine.inventory(observation):
            if row["kind"] != "vm":
                continue
            obj = observation.hosts[row["host"]].get("vm", row["name"])
            ips = [fix or nic.get("ip") for fix, nic in zip(fixed.get(row["name"], []), row["nics"], strict=False)]
            out[by_clone.get(row["name"], row["name"])] = ClonedVM(
                by_clone.get(row["name"], row["name"]), row["name"], row["host"], obj.uuid if obj else None,
                row.get("state") or "", [n["mac"] for n in row["nics"]], ips,
            )  # fmt: skip
    return out


def destroy(stack_file: Path) -> None:
    """Destroy a clone's stack (only what it owns) and remove its program."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    if not stack_file.exists():
        return
    stack = load_stack(stack_file)
    with Engine(stack) as engine, engine.locked():
        plan, observation = engine.plan(destroy=True)
        engine.apply(plan, observation)
    stack_file.unlink()


@contextmanager
def cloned_environment(
    stack: str | Path,
    *,
    name: str | None = None,
    hosts: dict[str, str] | None = None,
    subnet_map: dict[str, str] | None = None,
    host_map: dict[str, str] | None = None,
    full: bool = False,
    from_snapshot: str | None = None,
    connected: bool = False,
    state: str | None = None,
    folder: Path | None = None,
    keep: bool = False,
) -> Iterator[ClonedEnvironment]:
    """Clone the deployed stack `stack`, yield its addresses, destroy it afterwards.

    `hosts` overrides host URIs as `--host NAME=URI` does; `folder` is where the clone's
    program goes (default: beside the source); `keep=True` leaves the clone running."""
    name = name or f"t-{secrets.token_hex(3)}"
    source = Path(stack)
    out = (folder or source.resolve().parent) / f"{name}.py"
    opts = CloneOptions(name, dict(subnet_map or {}), dict(host_map or {}), full, from_snapshot, connected, state, out)
    try:
        result = clone(source, opts, hosts)
        env = ClonedEnvironment(name, out, result, dict(hosts or {}))
        env.refresh()
        yield env
    finally:
        if not keep:
            destroy(out)


def _factory() -> Iterator[Callable[..., ClonedEnvironment]]:
    with contextlib.ExitStack() as stack:

        def make(source: str | Path, **kwargs: Any) -> ClonedEnvironment:
            return stack.enter_context(cloned_environment(source, **kwargs))

        yield make


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only needed for the fixture
    pass
else:
    virtplan_clone = pytest.fixture(_factory, name="virtplan_clone")
