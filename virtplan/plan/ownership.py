"""Which stack owns an observed object, as far as virtplan can prove it.

Domains and networks carry virtplan's mark in their <metadata>; pools, volumes and
snapshots, which libvirt cannot tag, are proven by the stack's record of them.
"""

from __future__ import annotations

from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import StateStore


def owner_stack(obj: ObservedObject, address: str, uri: str, store: StateStore, stack: str) -> str | None:
    """The stack that owns `obj` as far as virtplan can prove: `stack` or another name, or
    None when the object is foreign."""
    if obj.kind in ("vm", "network"):
        return obj.owner.stack if obj.owner is not None else None
    record = store.get(uri, address)
    if record is not None and (record.get("pending") or record.get("id") == obj.uuid):
        return stack
    return None


def owned_objects(host: HostState, store: StateStore, stack: str) -> list[ObservedObject]:
    """The objects on `host` that `stack` can prove it owns."""
    return [
        o for o in host.objects.values()
        if owner_stack(o, f"{host.name}/{o.kind}/{o.key}", host.uri, store, stack) == stack
    ]  # fmt: skip
