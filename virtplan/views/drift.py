"""Drift as text: the "Changes outside virtplan" section of `plan` and `drift`."""

from __future__ import annotations

from typing import Any

from virtplan.plan.drift import MISSING, DriftReport
from virtplan.plan.planfile import SENSITIVE, mask
from virtplan.views.text import escape, value


def drift_lines(report: DriftReport, hosts: dict[str, str]) -> list[str]:
    """The "Changes outside virtplan" section as rich-markup lines (empty without drift)."""
    if report.empty:
        return []

    lines = ["[bold]Changes outside virtplan[/bold] [dim](since virtplan last applied the stack)[/dim]"]
    for host in hosts:
        items = [d for d in report.drifted if d.host == host]
        if not items:
            continue
        lines.append(f"  [bold]Host {escape(host)}[/bold]")
        for d in items:
            if d.status == "missing":
                lines.append(f"    [red]! {d.kind} {escape(d.key)}: {MISSING}[/red]")
                continue
            lines.append(f"    [yellow]! {d.kind} {escape(d.key)}[/yellow]")
            for f in d.fields:
                before, after = escape(shown(d.kind, f.field, f.applied)), escape(shown(d.kind, f.field, f.actual))
                if before == after:  # what differs is masked: a password
                    after += " (password changed)"
                lines.append(f"        {f.field}: {before} -> {after}  [dim](applied -> now)[/dim]")
    lines.append("")
    return lines


def shown(kind: str, name: str, v: Any) -> str:
    """A field value as a reviewer reads it, secrets masked."""
    masked = mask(kind, name, v)
    return SENSITIVE if masked == SENSITIVE else value(name, masked)
