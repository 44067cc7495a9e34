"""The import's guarantee: every declaration round-trips, so planning the program is a no-op.

`settle` declares the chosen objects, computes each one's desired spec exactly as
`virtplan plan` does and compares it with what the host has; whatever differs (or cannot
be declared at all) is left out with its reason, together with everything that refers to
it, and the rest is declared again, until nothing differs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from virtplan.errors import VirtplanError
from virtplan.workflows.importer.declare import Declaration, Declarer, Key, declare

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState
    from virtplan.model import Stack
    from virtplan.workflows.importer.choose import Choice

ROUNDS = 20  # each round leaves out at least one object; a host rarely needs more than two


class ImportFailed(VirtplanError):
    """The host cannot be imported as asked."""


def settle(
    state: HostState, choice: Choice, host_name: str, uri: str, stack_name: str
) -> tuple[Declarer, dict[Key, str]]:
    """The declarations that round-trip, and (kind, key) -> why for each object left out."""
    excluded: dict[Key, str] = {}
    for _ in range(ROUNDS):
        declarer, stack = declare(state, choice, host_name, uri, excluded, stack_name)
        failed = dict(declarer.reasons)
        failed.update({k: v for k, v in round_trip_problems(stack, state).items() if k not in failed})
        failed = {k: v for k, v in failed.items() if k not in excluded}
        if not failed:
            _note_unmodelled(declarer, stack, state)
            return declarer, excluded
        excluded.update(failed)
        for dep in _dependents(declarer.decls, failed) - set(failed):
            needs = sorted(f"{k} {n}" for k, n in declarer.decls[dep].refs if (k, n) in excluded)
            excluded[dep] = f"needs {', '.join(needs) or 'an object left out'}, which is left out"
    raise ImportFailed("the import did not settle; report this with the host's objects")  # pragma: no cover


def round_trip_problems(stack: Stack, state: HostState) -> dict[Key, str]:
    """Declarations whose desired spec differs from the host: (kind, key) -> why."""
    from virtplan.documents.render import Renderer
    from virtplan.model import validate
    from virtplan.plan.planner import desired_spec, differing

    problems: dict[Key, str] = {}
    try:
        validate(stack)
    except VirtplanError as exc:
        for err in getattr(exc, "errors", []):
            for r in stack.managed():
                if r.address == err.address:
                    problems[(r.kind, r.key)] = f"{err.field}: {err.message}"
        if not problems:
            raise
        return problems
    renderer: Renderer = Renderer(stack, {state.name: state.facts})
    for r in stack.managed():
        obj = state.get(r.kind, r.key)
        if obj is None:
            continue
        try:
            desired = desired_spec(r, renderer)
        except ValueError as exc:
            problems[(r.kind, r.key)] = str(exc)
            continue
        differ = sorted(differing(obj.spec, desired))
        if differ:
            shown = "; ".join(f"{k}: host has {obj.spec.get(k)!r}, would declare {desired[k]!r}" for k in differ[:3])
            problems[(r.kind, r.key)] = f"does not round-trip ({shown})"
    return problems


def _note_unmodelled(declarer: Declarer, stack: Stack, state: HostState) -> None:
    """The comment above each imported VM: what virtplan does not model, which a later
    redefinition keeps as the host has it (and anything it would drop)."""
    from virtplan.documents.merge import Kept, keep_unmodelled
    from virtplan.documents.render import Renderer
    from virtplan.workflows.codegen import wrap_comment

    renderer = Renderer(stack, {state.name: state.facts})
    for (kind, key), decl in declarer.decls.items():
        obj = state.get(kind, key)
        if kind != "vm" or obj is None:
            continue
        report = Kept()
        keep_unmodelled(renderer.domain_xml(decl.resource), obj.xml, report)  # type: ignore[arg-type]
        lines = []
        if report.kept:
            lines += wrap_comment("Not modeled by virtplan, kept as the host has them when virtplan redefines "
                                  "this VM: " + ", ".join(_counted(report.kept)) + ".")  # fmt: skip
        if report.dropped:
            lines += wrap_comment("Dropped when virtplan redefines it: " + ", ".join(report.dropped) + ".")
        decl.note = "\n".join(lines)


def _counted(items: list[str]) -> list[str]:
    """Items in first-seen order, repeats counted: ["redirdev spicevmc x2", ...]."""
    counts: dict[str, int] = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return [f"{item} x{n}" if n > 1 else item for item, n in counts.items()]


def _dependents(decls: dict[Key, Declaration], gone: Iterable[Key]) -> set[Key]:
    """`gone` and every declaration that refers to one of them, directly or not."""
    out = set(gone)
    changed = True
    while changed:
        changed = False
        for key, d in decls.items():
            if key not in out and d.refs & out:
                out.add(key)
                changed = True
    return out
