"""Base images others build on are protected.

A volume that other volumes use as their backing file (a clone's overlays on a frozen
source disk, a stack's overlays on a base image, snapshot layers) cannot be deleted,
replaced or grown without corrupting them. The planner's view covers only the pools a
stack declares, so the engine asks every pool of the host before it hands out a plan that
deletes, replaces or grows a volume, and apply checks once more right before deleting.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from virtplan.errors import FieldError

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState
    from virtplan.plan.planner import Plan


def _label(path: str, names: dict[str, str]) -> str:
    return names.get(path, path)


def check_plan(plan: Plan, hosts: dict[str, HostState], connection: Any) -> list[FieldError]:
    """Problems with the plan's volume deletions, replacements and growths: one per volume
    that volumes outside those being deleted in the same plan still back onto."""
    from virtplan.hosts.chains import backing_map
    from virtplan.plan.planner import Action

    risky = [
        c for c in plan.changes
        if c.kind == "volume" and (c.action in (Action.DELETE, Action.REPLACE) or c.moved_from
                                   or (c.action == Action.UPDATE and any(fc.field == "capacity" for fc in c.changes)))
    ]  # fmt: skip
    errors: list[FieldError] = []
    for host_name in sorted({c.host for c in risky}):
        host = hosts[host_name]
        going = {
            o.uuid for c in plan.changes
            if c.host == host_name and c.kind == "volume" and c.action in (Action.DELETE, Action.REPLACE)
            for o in [host.get("volume", c.key)] if o is not None and o.uuid
        }  # fmt: skip
        users = backing_map(connection(host_name))
        names = {o.uuid: o.key for o in host.of_kind("volume") if o.uuid}
        for change in (c for c in risky if c.host == host_name):
            obj = host.get("volume", change.moved_from or change.key)  # a renamed volume: the old one goes
            if obj is None or not obj.uuid:
                continue
            if change.action == Action.DELETE or change.action == Action.REPLACE or change.moved_from:
                left = [u for u in users.get(obj.uuid, []) if u not in going]
                verb = "renamed" if change.moved_from else "deleted" if change.action == Action.DELETE else "replaced"
            else:
                left = users.get(obj.uuid, [])
                verb = "grown"
            if left:
                shown = ", ".join(_label(p, names) for p in sorted(left))
                errors.append(FieldError(
                    change.address, "backing",
                    f"cannot be {verb}: other volumes are copy-on-write overlays on it ({shown}); "
                    "remove those first (for a clone: `virtplan destroy stacks/<clone>.py`)",
                ))  # fmt: skip
    return errors
