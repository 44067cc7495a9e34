"""The order of a stack's resources: each after what it depends on.

`dependency_rounds` is what rounds of graphlib's get_ready/done would give (each resource
in the round after the latest of its dependencies), without graphlib's bookkeeping per
node, which was a tenth of a no-op plan of a thousand VMs; validation checks cycles with
it, the planner orders with it.
"""

from __future__ import annotations

import graphlib

from virtplan.model.resources import Resource


def dependency_rounds(resources: list[Resource]) -> dict[int, int]:
    """id(resource) -> its round: 0 without dependencies among `resources`, else one more
    than the latest of theirs. Raises graphlib.CycleError (its second argument: the ids
    along the cycle, the first repeated at the end) if they depend on each other in a
    circle."""
    known = {id(r) for r in resources}
    deps = {id(r): [d for d in r.dependencies() if id(d) in known] for r in resources}
    rounds: dict[int, int] = {}
    for resource in resources:  # a program declares most objects after what they use: one pass
        latest = -1
        for dep in deps[id(resource)]:
            got = rounds.get(id(dep))
            if got is None:
                _depth_first(resource, deps, rounds)
                break
            latest = max(latest, got)
        else:
            rounds[id(resource)] = latest + 1
    return rounds


def _depth_first(start: Resource, deps: dict[int, list[Resource]], rounds: dict[int, int]) -> None:
    """The rounds of `start` and of what it depends on, without recursion (chains of backing
    volumes can be long)."""
    path, on_path = [start], {id(start)}
    pending = [iter(deps[id(start)])]
    while path:
        for dep in pending[-1]:
            if id(dep) in rounds:
                continue
            if id(dep) in on_path:
                cycle = [*path[path.index(dep) :], dep]
                raise graphlib.CycleError("nodes are in a cycle", [id(r) for r in cycle])
            path.append(dep)
            on_path.add(id(dep))
            pending.append(iter(deps[id(dep)]))
            break
        else:
            done = path.pop()
            pending.pop()
            on_path.discard(id(done))
            rounds[id(done)] = 1 + max((rounds[id(d)] for d in deps[id(done)]), default=-1)
