"""The native backend: one Pulumi dynamic resource type per virtplan kind.

Types are `pulumi-python:dynamic/virtplan:Network`, `...:Pool`, `...:Volume` and `...:VM`.
Each resource's inputs describe one virtplan resource (see `virtplan.pulumi.describe`);
its provider plans and applies that resource alone with the engine, so ownership, field
policies, live updates and restarts are exactly the CLI's.

Guarantees:
- `check` runs the model's validation and reports failures per input property; inputs
  holding unknown values (preview) pass through unchecked.
- `diff` asks the planner against the live host: `replaces` names the inputs whose fields
  force replacement, `delete_before_replace` is always set (libvirt names are unique). A
  restart, replacement or destructive note the planner attaches is sent to the engine as a
  warning on the resource (see `virtplan.pulumi.notes`).
- `create` adopts an object of the same name this stack already owns; an object it does
  not own is an error, never a takeover. Neither `create` nor `update` replaces an object
  (Pulumi does that, after showing it in the preview).
- `read` returns the actual state; the resource is missing (empty id) only when libvirt
  does not list the object or another owner's object has taken its name. Connection
  errors are errors.
- `delete` removes the object only if this stack owns it.
- A provider holds no connection between calls; it pickles by reference (dill).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    ResourceProvider,
    UpdateResult,
)

from virtplan.engine import Observation
from virtplan.errors import VirtplanError
from virtplan.plan.planner import Action, ResourceChange
from virtplan.plan.policy import Policy
from virtplan.pulumi.describe import (
    InputError,
    Inputs,
    contains_unknowns,
    failures,
    identity,
    input_key,
    input_policy,
    inputs_of,
    rebuild,
    with_drift,
)
from virtplan.pulumi.notes import change_notes, urn, warn
from virtplan.pulumi.session import ProviderError, Session

#: Outputs each kind adds to its inputs.
KIND_OUTPUTS = {
    "network": ("address", "observed", "uuid", "bridgeName"),
    "pool": ("address", "observed", "uuid"),
    "volume": ("address", "observed", "volumePath"),
    "vm": ("address", "observed", "uuid", "macAddresses", "ipAddresses"),
}


class VirtplanProvider(ResourceProvider):
    """The dynamic provider for one kind. Holds only strings: its kind, template folder and
    the Pulumi stack's name (to attach warnings to resources); everything else, ownership
    included, it reads from the hosts at each call."""

    def __init__(self, kind: str, template_dir: str | None = None, pulumi_stack: str | None = None):
        super().__init__()
        self.kind = kind
        self.template_dir = template_dir
        self.pulumi_stack = pulumi_stack

    def _session(self, inputs: Inputs) -> Session:
        return Session(self.kind, inputs, self.template_dir)

    # -- check ----------------------------------------------------------------------------
    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        """Validate with the model's rules; unknown values (preview) are not checked."""
        inputs = inputs_of(news)
        if contains_unknowns(inputs):
            return CheckResult(news, [])
        try:
            rebuilt = rebuild(self.kind, inputs, self.template_dir)
        except InputError as exc:
            return CheckResult(news, [CheckFailure("", str(exc))])
        return CheckResult(news, [CheckFailure(e.field, e.message) for e in failures(rebuilt)])

    # -- diff -------------------------------------------------------------------------------
    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        """What the planner would do with the new inputs against the live host."""
        before, after = inputs_of(olds), inputs_of(news)
        old_id, new_id = identity(self.kind, before), identity(self.kind, after)
        renamed = [k for k in new_id if old_id.get(k) != new_id[k]]
        if renamed:
            return DiffResult(changes=True, replaces=renamed, delete_before_replace=True)
        if contains_unknowns(after):
            return self._static_diff(before, after)
        with self._session(after) as session:
            change = session.plan(session.observe())
        if change is None:
            return DiffResult(changes=_soft_change(before, after), replaces=[], delete_before_replace=True)
        self._note(session.rebuilt.host.name, session.rebuilt.target.key, change)
        replaces: list[str] = []
        if change.action == Action.REPLACE:
            replaces = sorted({input_key(self.kind, fc.field) for fc in change.changes if fc.policy == Policy.REPLACE})
        return DiffResult(changes=True, replaces=replaces, delete_before_replace=True)

    def _note(self, host: str, key: str, change: ResourceChange) -> None:
        """Restarts and destructive notes, as a warning on this resource (Pulumi has no place for them)."""
        message = change_notes(change)
        if message:
            type_ = f"pulumi-python:dynamic/virtplan:{RESOURCES[self.kind].__name__}"
            warn(message, urn(getattr(self, "pulumi_stack", None), type_, f"{host}/{key}"))

    def _static_diff(self, before: Inputs, after: Inputs) -> DiffResult:
        """Preview with unknown inputs: compare the inputs and apply the field policies."""
        changed = [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
        replaces = [k for k in changed if input_policy(self.kind, k) == Policy.REPLACE]
        return DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    # -- create / update ------------------------------------------------------------------
    def create(self, props: dict[str, Any]) -> CreateResult:
        """Create the object, or adopt the one of that name this stack already owns."""
        inputs = inputs_of(props)
        outs = self._converge(inputs, "create")
        return CreateResult(outs["address"], outs)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        """Apply the planner's update (live, or config plus graceful restart)."""
        return UpdateResult(self._converge(inputs_of(news), "update"))

    def _converge(self, inputs: Inputs, verb: str) -> dict[str, Any]:
        with self._session(inputs) as session:
            observation = session.observe()
            change = session.plan(observation)
            if change is not None and change.action == Action.REPLACE:
                fields = ", ".join(fc.field for fc in change.changes if fc.policy == Policy.REPLACE)
                fix = {
                    "create": "an object of this name owned by this stack exists and differs in {fields}, which "
                    "forces replacement; remove it (or declare it as it is) and run `pulumi up` again",
                    "update": "the object's {fields} changed since the preview, which forces replacement; run "
                    "`pulumi refresh`, then `pulumi up` to see the replacement in the preview",
                }[verb].format(fields=fields)
                raise ProviderError(f"{session.address}: nothing was changed: {fix}")
            if change is not None:
                session.apply(change, observation)
                observation = session.observe()
            return session.outputs(inputs, observation)

    # -- read -------------------------------------------------------------------------------
    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        """The actual state: drifted fields replace the stored values; missing -> empty id."""
        inputs = inputs_of(props)
        if not inputs.get("stack"):
            raise ProviderError(
                f"cannot read {self.kind} {id_!r} without its virtplan description: `pulumi import` does not "
                "work for dynamic providers (pulumi/pulumi#16175); declare the object in the stack program instead"
            )
        with self._session(inputs) as session:
            observation = session.observe()
            self._check_readable(session, observation)
            found = session.found(observation)
            if found.obj is None or not found.owned:
                return ReadResult("", {})
            actual = with_drift(self.kind, inputs, session.drift(observation, found.obj))
            return ReadResult(id_ or session.address, session.outputs(actual, observation), actual)

    def _check_readable(self, session: Session, observation: Observation) -> None:
        """A volume in an inactive pool cannot be listed: that is not 'missing'."""
        target = session.rebuilt.target
        if self.kind != "volume":
            return
        pool_name = target.key.split("/", 1)[0]
        pool = observation.hosts[session.rebuilt.host.name].get("pool", pool_name)
        if pool is not None and not pool.spec.get("active"):
            raise ProviderError(f"cannot read {session.address}: pool {pool_name!r} is inactive (start it first)")

    # -- delete -----------------------------------------------------------------------------
    def delete(self, _id: str, props: dict[str, Any]) -> None:
        """Delete the object if this stack owns it; a missing or foreign object is left alone."""
        with self._session(inputs_of(props)) as session:
            observation = session.observe()
            change = session.plan(observation, destroy=True)
            if change is not None:
                session.apply(change, observation)


def _soft_change(before: Inputs, after: Inputs) -> bool:
    """Inputs libvirt never sees but later calls use: the shutdown timeout, the host's URI."""
    uri = [(inputs.get("host") or {}).get("uri") for inputs in (before, after)]
    return before.get("shutdownTimeout") != after.get("shutdownTimeout") or uri[0] != uri[1]


def _outputs_as_inputs(kind: str) -> dict[str, None]:
    return dict.fromkeys(KIND_OUTPUTS[kind])


class _Resource(pulumi.dynamic.Resource):
    """Base of the virtplan dynamic resources: inputs from `describe`, outputs added by the provider."""

    kind: ClassVar[str] = ""
    address: pulumi.Output[str]
    observed: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        inputs: dict[str, Any],
        provider: VirtplanProvider,
        opts: pulumi.ResourceOptions | None = None,
    ):
        if provider.kind != self.kind:
            raise VirtplanError(f"a {self.kind} resource needs the {self.kind} provider, not {provider.kind!r}")
        super().__init__(provider, name, {**inputs, **_outputs_as_inputs(self.kind)}, opts)


class Network(_Resource, module="virtplan", name="Network"):
    """A libvirt network managed by virtplan."""

    kind = "network"
    uuid: pulumi.Output[str]
    bridgeName: pulumi.Output[str]


class Pool(_Resource, module="virtplan", name="Pool"):
    """A libvirt storage pool managed by virtplan."""

    kind = "pool"
    uuid: pulumi.Output[str]


class Volume(_Resource, module="virtplan", name="Volume"):
    """A libvirt storage volume managed by virtplan."""

    kind = "volume"
    volumePath: pulumi.Output[str]


class VM(_Resource, module="virtplan", name="VM"):
    """A libvirt domain managed by virtplan."""

    kind = "vm"
    uuid: pulumi.Output[str]
    macAddresses: pulumi.Output[list[str]]
    ipAddresses: pulumi.Output[list[str | None]]


RESOURCES: dict[str, type[_Resource]] = {"network": Network, "pool": Pool, "volume": Volume, "vm": VM}
