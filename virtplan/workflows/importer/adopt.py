"""`virtplan adopt`: taking ownership of imported objects, explicitly.

An imported object is only *claimed* (the planner accepts it while it matches). Adopting
checks every declared object first (it exists, no other stack owns it, it matches its
declaration exactly) and changes nothing if any check fails; then it marks each as the
stack's, after which plan and apply manage it like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState, ObservedObject
    from virtplan.model import Resource, Stack

Say = Callable[[str], None]


@dataclass
class AdoptResult:
    """Addresses adopted now, already this stack's, and declared but not on the host."""

    adopted: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def adopt(stack_file: Path, host_uris: dict[str, str] | None = None, say: Say | None = None) -> AdoptResult:
    """Take ownership of every declared object that exists, is no stack's and matches its
    declaration exactly. Checks everything first; changes nothing if anything is wrong."""
    from virtplan.engine import Engine
    from virtplan.errors import FieldError
    from virtplan.model import load_stack
    from virtplan.plan.ownership import owner_stack
    from virtplan.plan.planner import PlanError, desired_spec, ordered

    say = say or (lambda _m: None)
    stack = load_stack(stack_file, host_uris)
    result = AdoptResult()
    with Engine(stack) as engine, engine.locked():
        observation = engine.observe()
        errors: list[FieldError] = []
        todo: list[tuple[Resource, ObservedObject]] = []
        for r in ordered([x for x in stack.managed() if x.kind != "snapshot"]):
            assert r.host is not None
            host = observation.hosts[r.host.name]
            obj = host.get(r.kind, r.key)
            if obj is None:
                result.missing.append(r.address)
                continue
            owner = owner_stack(obj, r.address, host.uri, engine.store, stack.key)
            if owner == stack.key:
                result.already.append(r.address)
                continue
            if owner is not None:
                errors.append(FieldError(r.address, "name", f"belongs to stack {owner!r}; it cannot be adopted"))
                continue
            desired = desired_spec(r, observation.renderer)
            differ = sorted(k for k, v in desired.items() if obj.spec.get(k) != v)
            if differ:
                why = f"differs from the host in {', '.join(differ)}; make the declaration match it first"
                errors.append(FieldError(r.address, differ[0], why))
                continue
            todo.append((r, obj))
        if errors:
            raise PlanError(errors)
        for r, obj in todo:
            assert r.host is not None
            _take(engine.connection(r.host.name), engine.store, observation.hosts[r.host.name], r, obj, stack)
            result.adopted.append(r.address)
            say(f"adopted {r.address}")
    return result


def _take(conn: Any, store: Any, host: HostState, r: Resource, obj: ObservedObject, stack: Stack) -> None:
    """Make `obj` the stack's: virtplan's owner mark in a domain's or network's metadata,
    its record (with the identity it has now) for a pool or volume (which libvirt cannot mark)."""
    import libvirt

    from virtplan.documents.fragments import owner_attrs, owner_mark, with_owner
    from virtplan.documents.render import NAMESPACE
    from virtplan.plan.ownership import identity_of

    if r.kind == "vm":
        dom = conn.lookupByName(r.key)
        timeout = getattr(r, "shutdown_timeout", 60.0)
        mark = owner_mark(owner_attrs(stack.name, stack.project, r.address, **{"shutdown-timeout": timeout}))
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "virtplan", NAMESPACE, flags)
        store.forget(host.uri, r.address)
    elif r.kind == "network":
        net = conn.networkLookupByName(r.key)
        xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        conn.networkDefineXML(with_owner(xml, owner_attrs(stack.name, stack.project, r.address)))
        store.forget(host.uri, r.address)
    else:
        expect = identity_of(obj.spec) if r.kind == "volume" else None
        store.put(host.uri, r.address, kind=r.kind, id=obj.uuid, pending=False, claim=None, expect=expect)
