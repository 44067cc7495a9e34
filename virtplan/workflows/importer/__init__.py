"""Bring existing libvirt objects under management: `virtplan import` and `virtplan adopt`.

`import_host` reads a host's domains, networks, pools and volumes (all, or those matching
`--name-pattern` plus what they refer to) and writes a readable stack program declaring
them. What it declares is checked before it is written: every object's desired spec,
computed exactly as `virtplan plan` computes it, must equal what the host has, so planning
the program is a no-op. Objects that cannot round-trip (a CD-ROM, an inactive network, a
disk outside any pool, ...) are left out, each named in the program's header with the
reason, together with everything that depends on them.

The imported objects are not owned yet: the program's state file records an import
*claim* for each, which lets the planner accept them while they match (anything else is
an error, and virtplan never changes them). `adopt` then takes ownership explicitly:
virtplan's mark in the domain and network metadata, its record for pools and volumes.

The package, in the order an import runs: `read` (the host), `choose` (what to import),
`declare` (model objects from the host's values), `check` (the round trip, leaving out
what does not match), `program` (the text, written by `virtplan.workflows.codegen`); and
`adopt`, run later on the written program.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtplan.workflows.importer.adopt import AdoptResult, Say, adopt
from virtplan.workflows.importer.check import ImportFailed, settle
from virtplan.workflows.importer.choose import choose
from virtplan.workflows.importer.program import import_program
from virtplan.workflows.importer.read import read_host

__all__ = ["AdoptResult", "ImportFailed", "ImportResult", "adopt", "import_host"]


@dataclass
class ImportResult:
    """What `import_host` wrote and declared, and what it left out (with the reasons)."""

    stack_file: Path
    declared: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    skipped: dict[str, str] = field(default_factory=dict)  # "kind name" -> reason

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.declared.values())


def import_host(
    uri: str,
    out: Path,
    patterns: list[str] | None = None,
    host_name: str = "imported",
    say: Say | None = None,
) -> ImportResult:
    """Write a stack program at `out` declaring the host's objects, and record import claims."""
    from virtplan.hosts.connection import connect

    say = say or (lambda _m: None)
    patterns = list(patterns or [])
    if out.exists():
        raise ImportFailed(f"{out} already exists; pick another --out (import never overwrites a program)")
    stack_name = out.stem
    conn = connect(uri, host_name)
    try:
        state = read_host(conn, host_name, uri, stack_name)
    finally:
        conn.close()
    skipped: dict[str, str] = {}
    choice = choose(state, patterns, skipped)
    declarer, excluded = settle(state, choice, host_name, uri, stack_name)
    for (kind, key), why in sorted(excluded.items()):
        skipped[f"{kind} {key}"] = why
    text = import_program(declarer, uri, patterns, skipped, stack_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    result = ImportResult(out)
    claims: dict[str, dict[str, Any]] = {}
    for (kind, key), decl in declarer.decls.items():
        obj = state.get(kind, key)
        if obj is None:
            continue
        claims[decl.resource.address] = {"kind": kind, "claim": obj.uuid}
        result.declared.setdefault(kind, []).append(key)
    _record_claims(out, host_name, uri, claims)
    result.skipped = skipped
    say(f"wrote {out}: {result.count} object(s) declared, {len(skipped)} left out")
    return result


def _record_claims(program: Path, host_name: str, uri: str, claims: dict[str, dict[str, Any]]) -> None:
    """Record on the host which objects the new program declares (not owned yet: `plan`
    accepts them while they match; `adopt` takes them)."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    with Engine(load_stack(program, {host_name: uri})) as engine, engine.locked():
        engine.store.put_many(uri, claims)
