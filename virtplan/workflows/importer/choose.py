"""Choosing what to import: the objects matching the patterns and everything they use.

Pure: reads the observed host state only. Whatever a chosen VM refers to (its networks,
disk volumes, kernel and initrd, their backing chains and pools) is chosen with it, so
the program is complete; objects another virtplan stack owns are never chosen.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState, ObservedObject


@dataclass
class Choice:
    """The observed objects to declare, by kind (volumes in name order)."""

    vms: list[ObservedObject]
    networks: list[ObservedObject]
    pools: list[ObservedObject]
    volumes: list[ObservedObject]


def _matches(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def choose(state: HostState, patterns: list[str], skipped: dict[str, str]) -> Choice:
    """The objects to import: those matching (all without patterns), plus what they refer
    to (networks, disk and boot volumes, backing chains, pools); objects another virtplan
    stack owns are left out and named in `skipped`."""
    path_to_volume = {o.uuid: o for o in state.of_kind("volume") if o.uuid}
    vms = []
    for o in sorted(state.of_kind("vm"), key=lambda o: o.key):
        if not _matches(o.key, patterns):
            continue
        if o.owner is not None:
            skipped[f"vm {o.key}"] = f"already managed by virtplan stack {o.owner.stack!r}"
            continue
        vms.append(o)
    nets = {o.key for o in state.of_kind("network") if patterns and _matches(o.key, patterns)}
    vols = {o.key for o in state.of_kind("volume") if patterns and _matches(o.key.split("/", 1)[1], patterns)}
    pools = {o.key for o in state.of_kind("pool") if patterns and _matches(o.key, patterns)}
    if not patterns:
        nets = {o.key for o in state.of_kind("network")}
        vols = {o.key for o in state.of_kind("volume")}
        pools = {o.key for o in state.of_kind("pool")}
    for vm in vms:
        nets |= {n["network"] for n in vm.spec.get("nics", []) if n.get("network")}
        vols |= {d["volume"] for d in vm.spec.get("disks", []) if d.get("volume") and "/" in d["volume"][1:]}
        for boot in ("kernel", "initrd"):
            path = vm.spec.get(boot)
            if path in path_to_volume:
                vols.add(path_to_volume[path].key)
    todo = list(vols)
    while todo:  # backing chains
        obj = state.get("volume", todo.pop())
        backing = obj.spec.get("backing") if obj is not None else None
        if backing in path_to_volume and path_to_volume[backing].key not in vols:
            vols.add(path_to_volume[backing].key)
            todo.append(path_to_volume[backing].key)
    pools |= {v.split("/", 1)[0] for v in vols}
    networks = []
    for key in sorted(nets):
        obj = state.get("network", key)
        if obj is None:
            continue
        if obj.owner is not None:
            skipped[f"network {key}"] = f"already managed by virtplan stack {obj.owner.stack!r}"
            continue
        networks.append(obj)
    found_pools = [state.get("pool", k) for k in sorted(pools)]
    found_vols = [state.get("volume", k) for k in sorted(vols)]
    return Choice(vms, networks, [p for p in found_pools if p is not None], [v for v in found_vols if v is not None])


def backing_first(volumes: list[ObservedObject]) -> list[ObservedObject]:
    """`volumes` ordered so that each comes after the volume it backs onto."""
    by_path = {v.uuid: v for v in volumes}
    out: list[ObservedObject] = []
    seen: set[str] = set()

    def visit(v: ObservedObject) -> None:
        if v.key in seen:
            return
        seen.add(v.key)
        backing = by_path.get(v.spec.get("backing"))
        if backing is not None:
            visit(backing)
        out.append(v)

    for v in volumes:
        visit(v)
    return out
