"""Which stack owns an observed object, as far as the host can prove it.

- Domains and networks carry virtplan's mark in their `<metadata>`, written with the very
  definition virtplan created (with a UUID it chose, so a define never takes over an
  object that appeared meanwhile): the mark names the owning stack (`project/name`).
- Pools, volumes, snapshots and frozen layers cannot be marked. A stack owns one when its
  records on the host (`virtplan.hosts.records`) hold a *confirmed* record of it, written
  after virtplan's create succeeded, whose identity is the object's: the pool's UUID
  (virtplan chooses it), the volume's path, format, size and backing file as virtplan
  made or last changed them. A volume changed or replaced outside virtplan no longer
  matches and is no longer provably ours: virtplan leaves it alone and says so.
- A write-ahead intent (`pending`) is never proof by itself. After a crash between a
  create and its confirmation, the intent's object is recovered as ours only if it is
  exactly what the intent said virtplan was about to create (and, where the host's clock
  tells, was created after the intent was written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtplan.documents.parse import Owner

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState, ObservedObject
    from virtplan.hosts.records import RecordLookup, Records

#: Volume fields that make up its identity (with its path).
IDENTITY = ("format", "capacity", "backing")


def mark_key(owner: Owner) -> str:
    """The stack a mark names: "project/name", or "name" for marks without a project."""
    project = owner.attrs.get("project", "")
    return f"{project}/{owner.stack}" if project else owner.stack


def owner_stack(obj: ObservedObject, address: str, uri: str, store: RecordLookup, stack: str) -> str | None:
    """The key of the stack that owns `obj` as far as virtplan can prove: `stack` (the key
    of the stack whose records `store` holds), another stack's key (marks only), or None
    when the object is foreign or no longer provably anyone's."""
    if obj.kind in ("vm", "network"):
        if obj.owner is None:
            return None
        key = mark_key(obj.owner)
        if key != stack and "project" not in obj.owner.attrs and stack.endswith("/" + obj.owner.stack):
            # a mark of virtplan 0.1 (name only): ours if our records list the object
            return stack if store.get(uri, address) is not None else key
        return key
    record = store.get(uri, address)
    if record is None:
        return None
    if record.get("pending"):
        return stack if recovered(record, obj) else None
    if record.get("id") != obj.uuid:
        return None
    if obj.kind == "volume" and not same_volume(record, obj):
        return None
    return stack


def identity_of(spec: dict[str, Any]) -> dict[str, Any]:
    """A volume's identity fields from its observed spec (what a record's `expect` holds).

    libvirt reports the format of a file that is not qcow2 by probing its bytes (a seed ISO
    reads as "iso", a raw disk as whatever its content looks like), so every non-qcow2
    format counts as "raw" here: what a guest writes must not change who owns the volume."""
    out = {k: spec.get(k) for k in IDENTITY}
    out["format"] = "qcow2" if spec.get("format") == "qcow2" else "raw"
    return out


def same_volume(record: dict[str, Any], obj: ObservedObject) -> bool:
    """The volume is still the one virtplan made or last changed (records of virtplan 0.1
    carry no identity beyond the path, and are taken as they are)."""
    expect = record.get("expect")
    if expect is None:
        return True
    actual = identity_of(obj.spec)
    return all(actual.get(k) == v for k, v in expect.items())


def recovered(record: dict[str, Any], obj: ObservedObject) -> bool:
    """An intent whose create was interrupted before its confirmation: ours only if the
    object is exactly what was about to be created (pools: the UUID virtplan chose)."""
    if obj.kind == "pool":
        return bool(record.get("id")) and record.get("id") == obj.uuid
    if obj.kind != "volume" or record.get("expect") is None:
        return False
    if not same_volume(record, obj):
        return False
    after = record.get("after")  # the host's clock before the create (if known)
    created = _ctime(obj.xml)
    return after is None or created is None or created >= float(after)


def _ctime(volume_xml: str) -> float | None:
    import xml.etree.ElementTree as ET

    if not volume_xml:
        return None
    text = ET.fromstring(volume_xml).findtext("target/timestamps/ctime")
    return float(text) if text else None


def owned_objects(host: HostState, store: Records, stack: str) -> list[ObservedObject]:
    """The objects on `host` that the stack with key `stack` can prove it owns."""
    return [
        o for o in host.objects.values()
        if owner_stack(o, f"{host.name}/{o.kind}/{o.key}", host.uri, store, stack) == stack
    ]  # fmt: skip
