"""What `virtplan plan` says about a change that Pulumi's display has no place for.

Pulumi shows a VM restart as a plain update and knows nothing of virtplan's destructive notes
(a network replacement cutting off running guests, a running VM stopped). A provider's `diff`
turns them into one warning diagnostic per resource, which `pulumi preview` and `pulumi up`
print under that resource and again in their "Diagnostics" section.

The warning goes to the engine's Log service. A dynamic provider process gets the engine's
address as its one argument (`python -m pulumi.dynamic ADDRESS`), but the SDK does not keep it,
so this module reads it from there; elsewhere (a provider called directly, in tests) it falls
back to `pulumi.log.warn`, which prints to stderr.
"""

from __future__ import annotations

import os
import re
import sys

from virtplan.plan.planner import Action, ResourceChange

_ADDRESS = re.compile(r"^[\w.\-\[\]:]+:\d+$")


def change_notes(change: ResourceChange) -> str | None:
    """One line for a change Pulumi would show without its consequence (None: nothing to add)."""
    parts = []
    if change.action == Action.RESTART:
        parts.append(f"restart: {change.why}")
    elif change.action == Action.REPLACE:
        parts.append(f"replace: {change.why}")
    if change.destructive:
        parts.append(f"destructive: {change.destructive}")
    if not parts:
        return None
    return f"virtplan: {change.address}: " + "; ".join(parts)


def urn(stack: str | None, type_: str, name: str) -> str:
    """The URN of a top-level resource of this project's `stack` ("" when either is unknown)."""
    project = os.environ.get("PULUMI_PROJECT")
    if not stack or not project:
        return ""
    return f"urn:pulumi:{stack}::{project}::{type_}::{name}"


def engine_address() -> str | None:
    """The engine's address when this process is a dynamic provider started by the engine."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if getattr(spec, "name", None) != "pulumi.dynamic.__main__" or len(sys.argv) < 2:
        return None
    address = sys.argv[-1]
    return address if _ADDRESS.match(address) else None


def warn(message: str, resource_urn: str = "") -> None:
    """A warning diagnostic from a provider, attached to `resource_urn` when given."""
    address = engine_address()
    if address is None:
        import pulumi

        pulumi.log.warn(message)
        return
    import grpc
    from pulumi.runtime.proto import engine_pb2, engine_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        engine_pb2_grpc.EngineStub(channel).Log(
            engine_pb2.LogRequest(severity=engine_pb2.WARNING, message=message, urn=resource_urn), timeout=30
        )
