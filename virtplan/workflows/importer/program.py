"""The imported stack program: a header saying what was imported and left out, then the
declarations, written by `virtplan.workflows.codegen` from the very model objects whose
round trip was checked (so the text declares exactly what was checked).
"""

from __future__ import annotations

import time

from virtplan.workflows.codegen import Writer, docstring, import_line
from virtplan.workflows.importer.declare import Declarer

#: The order of the program's sections; a declaration refers only to earlier ones.
SECTIONS = ("pool", "network", "volume", "vm")


def import_program(declarer: Declarer, uri: str, patterns: list[str], skipped: dict[str, str],
                   stack_name: str) -> str:  # fmt: skip
    """The program declaring `declarer`'s objects on the host at `uri`."""
    made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    which = f"objects matching {', '.join(patterns)} (and what they use)" if patterns else "every object"
    header = [
        f"Stack {stack_name!r}: {which} on {uri}, imported by `virtplan import` at {made}.",
        "",
        "Planning this program changes nothing: each declaration matches the host exactly.",
        "The objects are not virtplan's yet; `virtplan adopt` on this file takes ownership, after",
        "which plan/apply manage them like any stack's. A change re-renders a domain from",
        "virtplan's templates and keeps what virtplan does not model (CPU model, clock, boot",
        "order, controllers, channels, ...) as the host has it; the comment above each VM says what.",
    ]
    if skipped:
        header += ["", "Left out (they would not round-trip, or depend on something that does not):"]
        header += [f"- {what}: {why}" for what, why in sorted(skipped.items())]
    w = Writer()
    body = [w.declare(declarer.host, "host"), ""]
    for kind in SECTIONS:
        group = [d for d in declarer.decls.values() if d.kind == kind]
        for d in group:
            body += [d.note] if d.note else []
            body.append(w.declare(d.resource, d.var))
        body += [""] if group else []
    lines = [docstring(header), "", import_line(sorted(w.used)), "", *body]
    return "\n".join(lines).rstrip() + "\n"
