"""Report lines a guest prints on its serial console (the probe guest's protocol).

Each report is one line whose first word is a tag, followed by ``key=value`` words
(values percent-encoded). `virtplan show` uses the latest ``GUEST`` line to confirm a
VM's address from inside; `virtplan_lab.probe` builds a guest that prints them.
"""

from __future__ import annotations

import urllib.parse

GUEST = "GUEST"
GUEST_ERROR = "GUEST-ERROR"
GUEST_MEM = "GUEST-MEM"
GUEST_POWEROFF = "GUEST-POWEROFF"
GUEST_TICK = "GUEST-TICK"  # the probe guest counting, when asked to (`probe_tick: S` in user-data)
TAGS = frozenset({GUEST, GUEST_ERROR, GUEST_MEM, GUEST_POWEROFF, GUEST_TICK})


def parse_line(line: str) -> tuple[str, dict[str, str]] | None:
    """``(tag, fields)`` of one report line, None if the line is not a report."""
    words = line.strip().split()
    if not words or words[0] not in TAGS:
        return None
    fields = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep:
            fields[key] = urllib.parse.unquote(value)
    return words[0], fields


def parse_guest_line(text: str) -> dict[str, str] | None:
    """The fields of the last ``GUEST`` line in ``text`` (the latest boot's report), else None.

    ``text`` may be one line or a whole console log; a final line without a
    newline counts.
    """
    found = None
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is not None and parsed[0] == GUEST:
            found = parsed[1]
    return found


__all__ = [
    "GUEST", "GUEST_ERROR", "GUEST_MEM", "GUEST_POWEROFF", "GUEST_TICK", "TAGS", "parse_guest_line", "parse_line",
]  # fmt: skip
