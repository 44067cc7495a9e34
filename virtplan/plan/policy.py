"""How each comparable field is changed: the one table the planner, apply and the virsh
view share, and its refinements.

- live: applied to the running object and its persistent config, no interruption.
- restart: persistent config now; takes effect after the graceful restart the plan shows.
- replace: the object is destroyed and created again.
- immutable: virtplan refuses the change and says what to do instead.

Besides the table (`FIELDS`): how a live field reaches the running object (`LIVE`), the
policies that depend on the values (`field_policy`), which action a set of field changes
makes (`choose_action`) and what a change or deletion puts at risk (`change_risk`,
`delete_risk`).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from virtplan.plan.changes import Action, FieldChange, Reason


class Policy(StrEnum):
    LIVE = "live"
    RESTART = "restart"
    REPLACE = "replace"
    IMMUTABLE = "immutable"


L, R, X, FIXED = Policy.LIVE, Policy.RESTART, Policy.REPLACE, Policy.IMMUTABLE

FIELDS: dict[str, dict[str, Policy]] = {
    "vm": {
        "arch": X, "type": R, "machine": R, "firmware": R,
        "vcpus": L, "max_vcpus": R, "memory": L, "max_memory": R,
        "disks": L, "nics": L,  # additions at the end are live; anything else restarts
        "cloud_init": R, "graphics": R, "serial": R,
        "description": L, "autostart": L, "state": L,
        "kernel": R, "initrd": R, "cmdline": R, "console_log": R,
        "unplugged": L,  # runtime: NICs off their network's bridge are re-plugged
    },
    "network": {
        "mode": X, "bridge": X, "cidr": X, "gateway": X,
        "dhcp": R, "dhcp_range": R, "domain": R,
        "reservations": L, "autostart": L, "active": L,
    },
    "pool": {"type": FIXED, "path": FIXED, "autostart": L, "active": L},
    "volume": {"format": X, "backing": X, "capacity": L},  # shrinking is refused
    "snapshot": {"memory": FIXED},  # a snapshot keeps the moment it was taken
}  # fmt: skip

IMMUTABLE_HINTS = {
    ("pool", "type"): "declare a new pool with the new type and move volumes to it",
    ("pool", "path"): "declare a new pool at the new path and move volumes to it",
    ("volume", "capacity"): "volumes only grow; declare a new volume to get a smaller one",
    ("snapshot", "memory"): "a snapshot keeps the moment it was taken; declare one under a new name instead",
}


class Delivery(StrEnum):
    """How a live field reaches the running object."""

    RUNTIME = "runtime"  # power state, autostart, activity: the definition does not change
    HOT = "hot"  # set on the running object and in its definition, without redefining it
    PLUG = "plug"  # items appended at the end are hot-plugged after the definition is rewritten
    REPLUG = "replug"  # a running guest's NICs put back on their network's bridge; the definition does not change


LIVE: dict[str, dict[str, Delivery]] = {
    "vm": {
        "memory": Delivery.HOT, "vcpus": Delivery.HOT, "description": Delivery.HOT,  # within the maxima
        "disks": Delivery.PLUG, "nics": Delivery.PLUG,
        "state": Delivery.RUNTIME, "autostart": Delivery.RUNTIME, "unplugged": Delivery.REPLUG,
    },
    "network": {"reservations": Delivery.HOT, "autostart": Delivery.RUNTIME, "active": Delivery.RUNTIME},
    "pool": {"autostart": Delivery.RUNTIME, "active": Delivery.RUNTIME},
    "volume": {"capacity": Delivery.HOT},  # grown under a running guest through it
}  # fmt: skip


def policy(kind: str, field: str) -> Policy:
    return FIELDS[kind][field]


def field_policy(kind: str, field: str, before: Any, after: Any, *, uploaded: bool = False) -> Policy:
    """The policy of one field change, refined by its values: disks and NICs appended at
    the end are hot-plugged, data disks removed (the first disk stays) hot-unplugged, while
    any other change to them restarts; a volume shrink is refused. The capacity of a volume
    `uploaded` from an image (`source=`) is the image's size: when it changes, the image did,
    and the volume is replaced (uploaded again) rather than resized around old content."""
    if kind == "volume" and field == "capacity" and uploaded:
        return Policy.REPLACE
    if LIVE.get(kind, {}).get(field) == Delivery.PLUG:
        kept = before or []
        if kept != after[: len(kept)] and not (field == "disks" and data_disks_removed(kept, after)):
            return Policy.RESTART  # another removal or a change: not hot-pluggable
    if kind == "volume" and field == "capacity" and before is not None and after < before:
        return Policy.IMMUTABLE
    return FIELDS[kind][field]


def data_disks_removed(before: list[Any], after: list[Any]) -> list[Any]:
    """The disks removed when `after` is `before` less some disks other than the first (the
    boot disk), in the same order and otherwise unchanged; [] for any other change."""
    if not before or not after or before[0] != after[0] or len(after) >= len(before):
        return []
    rest = iter(after)
    removed, current = [], next(rest, None)
    for item in before:
        if item == current:
            current = next(rest, None)
        else:
            removed.append(item)
    return removed if current is None else []


def hot_fields(kind: str, fields: Iterable[str]) -> list[str]:
    """The fields among `fields` that are set on the running object (in table order)."""
    wanted = set(fields)
    return [f for f, how in LIVE.get(kind, {}).items() if how == Delivery.HOT and f in wanted]


def plugged_fields(kind: str, fields: Iterable[str]) -> list[str]:
    """The fields among `fields` whose appended items are hot-plugged (in table order)."""
    wanted = set(fields)
    return [f for f, how in LIVE.get(kind, {}).items() if how == Delivery.PLUG and f in wanted]


def redefines(kind: str, fields: Iterable[str]) -> bool:
    """Whether changing `fields` rewrites the object's definition: anything but runtime and
    hot fields does."""
    delivered = LIVE.get(kind, {})
    return any(delivered.get(f) not in (Delivery.RUNTIME, Delivery.HOT, Delivery.REPLUG) for f in fields)


def stays_up(kind: str, observed: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether the object is up and is to stay up, so restart fields need a restart: a
    running VM declared running, an active network."""
    if kind == "vm":
        return observed.get("state") == "running" and desired.get("state") == "running"
    if kind == "network":
        return bool(observed.get("active"))
    return False


def choose_action(
    kind: str, diffs: list[FieldChange], observed: dict[str, Any], desired: dict[str, Any]
) -> tuple[Action, Reason, list[str]]:
    """The action, reason and deciding fields for an owned object whose fields differ
    (none of them immutable): replace if any field forces it, restart if restart fields
    changed on an object that stays up, else update."""
    replacing = [d.field for d in diffs if d.policy == Policy.REPLACE]
    restarting = [d.field for d in diffs if d.policy == Policy.RESTART]
    if replacing:
        return Action.REPLACE, Reason.FORCES_REPLACEMENT, replacing
    if restarting and stays_up(kind, observed, desired):
        return Action.RESTART, Reason.NEEDS_RESTART, restarting
    return Action.UPDATE, Reason.FIELDS_CHANGED, [d.field for d in diffs]


def change_risk(
    kind: str, action: Action, observed: dict[str, Any], users: list[str], desired: dict[str, Any] | None = None
) -> str | None:
    """What a change of an object puts at risk (None: nothing): a replace, a restart, or
    stopping a running VM (`desired` state "stopped"); `users` are the running VMs on a
    network."""
    stopping = kind == "vm" and observed.get("state") == "running" and (desired or {}).get("state") == "stopped"
    if stopping and action in (Action.UPDATE, Action.RESTART):
        return "the running VM is stopped"
    if action not in (Action.REPLACE, Action.DELETE, Action.RESTART):
        return None
    if kind == "volume" and action != Action.RESTART:
        return "the volume and all data on it are deleted"
    if kind == "vm" and action == Action.REPLACE:
        if observed.get("state") == "running":
            return "the running VM is stopped and its domain recreated"
        return "the domain is recreated (its disks are kept)" if observed.get("disks") else None
    if kind == "network" and users:
        return f"running VMs lose connectivity until their NICs are re-plugged: {', '.join(users)}"
    return None


def delete_risk(kind: str, observed: dict[str, Any], users: list[str]) -> str | None:
    """What deleting an object puts at risk (None: nothing); `users` are the running VMs on
    a network that stay."""
    if kind == "snapshot":
        return "the snapshot is deleted; the VM can no longer be reverted to it"
    if kind == "volume":
        return "the volume and all data on it are deleted"
    if kind == "vm" and observed.get("state") == "running":
        return "the running VM is stopped and undefined (its disks are kept unless deleted too)"
    if kind == "network" and users:
        return f"running VMs lose connectivity: {', '.join(users)}"
    return None
