"""How each comparable field is changed: the one table the planner and apply share.

- live: applied to the running object and its persistent config, no interruption.
- restart: persistent config now; takes effect after the graceful restart the plan shows.
- replace: the object is destroyed and created again.
- immutable: virtplan refuses the change and says what to do instead.
"""

from __future__ import annotations

from enum import StrEnum


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
    },
    "network": {
        "mode": X, "bridge": X, "cidr": X, "gateway": X,
        "dhcp": R, "dhcp_range": R, "domain": R,
        "reservations": L, "autostart": L, "active": L,
    },
    "pool": {"type": FIXED, "path": FIXED, "autostart": L, "active": L},
    "volume": {"format": X, "backing": X, "capacity": L},  # shrinking replaces
    "snapshot": {"memory": FIXED},  # a snapshot keeps the moment it was taken
}  # fmt: skip

IMMUTABLE_HINTS = {
    ("pool", "type"): "declare a new pool with the new type and move volumes to it",
    ("pool", "path"): "declare a new pool at the new path and move volumes to it",
    ("volume", "capacity"): "volumes only grow; declare a new volume to get a smaller one",
    ("snapshot", "memory"): "a snapshot keeps the moment it was taken; declare one under a new name instead",
}


def policy(kind: str, field: str) -> Policy:
    return FIELDS[kind][field]
