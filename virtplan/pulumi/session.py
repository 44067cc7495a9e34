"""One provider call against one host: observe, plan and apply a single resource with the engine.

A `Session` opens its own libvirt connection and closes it when the call ends, so nothing
holds a connection between Pulumi's calls. It plans with the engine's planner over a stack
holding only the resource (ownership, clashes, field policies and refusals are the CLI's),
and applies that one change with the engine's apply code (live updates, restarts, seeds,
ownership records: all the CLI's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtplan.apply.concurrency import workers_for
from virtplan.engine import Engine, Observation
from virtplan.errors import VirtplanError
from virtplan.hosts.observe import ObservedObject, dhcp_leases
from virtplan.model import VM, Network, Pool, Volume
from virtplan.model.secrets import MASK
from virtplan.plan.ownership import owner_stack
from virtplan.plan.planner import Plan, ResourceChange, desired_spec
from virtplan.pulumi.describe import Inputs, Rebuilt, rebuild


class ProviderError(VirtplanError):
    """A provider call refused to act; the message says why and what to do."""


# Per-host bound on concurrent changes made by this process (Pulumi calls providers in parallel).
_slots: dict[str, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(uri: str, workers: Callable[[], int]) -> threading.BoundedSemaphore:
    """The host's bound, sized once per process by `workers()`."""
    with _slots_lock:
        if uri not in _slots:
            _slots[uri] = threading.BoundedSemaphore(max(1, workers()))
        return _slots[uri]


@dataclass
class Found:
    """The resource's libvirt object as observed, and whether this stack owns it."""

    obj: ObservedObject | None
    owned: bool


class Session:
    """Plan and apply one resource described by Pulumi inputs; use as a context manager."""

    def __init__(self, kind: str, inputs: Inputs, template_dir: str | None = None):
        self.kind = kind
        self.rebuilt: Rebuilt = rebuild(kind, inputs, template_dir)
        self.engine = Engine(self.rebuilt.context)  # its records live on the host
        self.store = self.engine.store

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.close()

    @property
    def address(self) -> str:
        return self.rebuilt.address

    # -- reading ----------------------------------------------------------------------
    def observe(self) -> Observation:
        """One bulk read of the host (objects deleted mid-read by parallel calls are skipped);
        the renderer knows the identities of owned objects."""
        return self.engine.observe()

    def found(self, observation: Observation) -> Found:
        host = observation.hosts[self.rebuilt.host.name]
        target = self.rebuilt.target
        obj = host.get(target.kind, target.key)
        if obj is None:
            return Found(None, False)
        owner = owner_stack(obj, self.address, host.uri, self.store, self.rebuilt.context.key)
        return Found(obj, owner == self.rebuilt.context.key)

    def desired(self, observation: Observation) -> dict[str, Any]:
        return desired_spec(self.rebuilt.target, observation.renderer)

    def drift(self, observation: Observation, obj: ObservedObject) -> dict[str, Any]:
        """Declared fields whose actual value differs from the inputs: field -> actual value."""
        return {k: obj.spec.get(k) for k, v in self.desired(observation).items() if obj.spec.get(k) != v}

    # -- planning and applying ------------------------------------------------------------
    def plan(self, observation: Observation, destroy: bool = False) -> ResourceChange | None:
        """The engine's change for this resource alone (None: nothing to do).

        Raises the engine's PlanError for clashes with objects this stack does not own, for
        changes it refuses (immutable fields) and for what its guards refuse (a volume
        others build on), exactly as `virtplan plan` does.
        """
        plan, _ = self.engine.plan(destroy, observation, scope=self.rebuilt.plan, only=self.address)
        return plan.changes[0] if plan.changes else None

    def apply(self, change: ResourceChange, observation: Observation) -> None:
        """Apply one change with the engine (raises ApplyError on failure). Pulumi runs one
        update of a stack at a time and orders its resources itself; the engine's
        whole-stack bookkeeping is left out, as the stack here is this one resource."""
        plan = Plan(self.rebuilt.plan.name, "", [change], {self.rebuilt.host.name: self.rebuilt.host.uri})
        host = self.rebuilt.host
        with _slot(host.uri, lambda: workers_for(host, self.engine.connection(host.name))):
            self.engine.apply(plan, observation, bookkeeping=False)
        self.engine.tidy()

    # -- outputs ----------------------------------------------------------------------------
    def outputs(self, inputs: Inputs, observation: Observation) -> dict[str, Any]:
        """`inputs` plus what libvirt says: the observed declared fields and identities."""
        obj = self.found(observation).obj
        if obj is None:
            raise ProviderError(f"{self.address} is missing on host {self.rebuilt.host.name!r} after apply")
        outs: dict[str, Any] = {**inputs, "address": self.address}
        outs["observed"] = observed = {k: obj.spec.get(k) for k in self.desired(observation)}
        graphics = observed.get("graphics")
        if isinstance(graphics, dict) and graphics.get("password"):
            observed["graphics"] = {**graphics, "password": MASK}  # not even its digest
        target = self.rebuilt.target
        if isinstance(target, (Network, Pool, VM)):
            outs["uuid"] = obj.uuid
        if isinstance(target, Network):
            outs["bridgeName"] = obj.spec.get("bridge")
        if isinstance(target, Volume):
            outs["volumePath"] = obj.uuid  # a volume's identity is its path
        if isinstance(target, VM):
            nics = obj.spec.get("nics") or []
            macs = [n.get("mac") for n in nics]
            networks = {n["network"] for n in nics if n.get("network")}
            leases = dhcp_leases(self.engine.connection(self.rebuilt.host.name), networks) if networks else {}
            declared = [n.ip for n in target.nics]
            outs["macAddresses"] = macs
            outs["ipAddresses"] = [
                leases.get(mac or "") or (declared[i] if i < len(declared) else None) for i, mac in enumerate(macs)
            ]
        return outs
