"""Read what the probe guest prints on its serial console.

Each report is one line whose first word is a tag, followed by ``key=value``
words (values percent-encoded by the guest; see ``guest/main.sh``)::

    GUEST ip=192.168.160.10 mac=52:54:00:00:00:10 hostname=probe1 instance-id=iid-1 value=v1 mem_kib=99480 ...
    GUEST-ERROR reason=no-seed
    GUEST-MEM mem_kib=148632
    GUEST-POWEROFF lease=released

Only complete lines count, and only when the tag starts the line (ignoring
carriage returns and surrounding blanks), so kernel messages and half-written
lines are never mistaken for reports.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from virtplan.hosts.guestlog import GUEST, GUEST_ERROR, parse_line

_KERNEL_PANIC = re.compile(r"Kernel panic - not syncing[^\n]*")
_POLL_SECONDS = 0.1
_TAIL_LINES = 25


@dataclass(frozen=True)
class GuestEvent:
    """One report line: its tag, its fields, and the log offset just past the line."""

    tag: str
    fields: dict[str, str]
    end_offset: int


class GuestError(RuntimeError):
    """The guest reported ``GUEST-ERROR`` or the kernel panicked; ``reason`` says which."""

    def __init__(self, reason: str, tail: str) -> None:
        super().__init__(f"probe guest failed: {reason}\n--- console tail ---\n{tail}")
        self.reason = reason


def iter_events(data: bytes, base_offset: int = 0) -> Iterator[GuestEvent]:
    """Reports in the complete lines of ``data`` (log bytes starting at ``base_offset``)."""
    position = 0
    while (newline := data.find(b"\n", position)) != -1:
        parsed = parse_line(data[position:newline].decode(errors="replace"))
        position = newline + 1
        if parsed is not None:
            yield GuestEvent(parsed[0], parsed[1], base_offset + position)


def wait_for_event(
    path: Path | str,
    tags: Iterable[str],
    timeout: float,
    since_offset: int = 0,
) -> GuestEvent:
    """The first report with one of ``tags`` in the log at ``path`` after ``since_offset``.

    Tails the file (which may not exist yet) until the report appears.  Raises
    :class:`GuestError` as soon as a ``GUEST-ERROR`` line (unless it is one of
    ``tags``) or a kernel panic appears after ``since_offset``, and
    ``TimeoutError`` with the tail of the log after ``timeout`` seconds.  If the
    file shrinks below ``since_offset`` (truncated by a restart without
    ``append='on'``), reading starts again from its beginning.
    """
    wanted = frozenset(tags)
    deadline = time.monotonic() + timeout
    offset = since_offset
    while True:
        chunk = _read_from(Path(path), offset)
        if chunk is None:
            offset = 0
            continue
        complete = chunk[: chunk.rfind(b"\n") + 1]
        for event in iter_events(complete, offset):
            if event.tag in wanted:
                return event
            if event.tag == GUEST_ERROR:
                raise GuestError(event.fields.get("reason", "unknown"), _tail(path))
        panic = _KERNEL_PANIC.search(complete.decode(errors="replace"))
        if panic is not None:
            raise GuestError(panic.group(0).strip(), _tail(path))
        offset += len(complete)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no {'/'.join(sorted(wanted))} line in {path} after {timeout:g} s\n{_tail(path)}")
        time.sleep(_POLL_SECONDS)


def wait_for_guest_line(path: Path | str, timeout: float, since_offset: int = 0) -> dict[str, str]:
    """The fields of the first ``GUEST`` line after ``since_offset`` in the console log at ``path``.

    Raises :class:`GuestError` on a ``GUEST-ERROR`` line or kernel panic, and
    ``TimeoutError`` after ``timeout`` seconds; see :func:`wait_for_event`.
    """
    return wait_for_event(path, [GUEST], timeout, since_offset).fields


def log_size(path: Path | str) -> int:
    """The current size of a console log (0 if missing): a ``since_offset`` for later waits."""
    try:
        return Path(path).stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> bytes | None:
    """The bytes of ``path`` from ``offset``; b"" if missing; None if shorter than ``offset``."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            if size < offset:
                return None
            handle.seek(offset)
            return handle.read()
    except FileNotFoundError:
        return b""


def _tail(path: Path | str, lines: int = _TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        return f"(unreadable: {err})"
    return "\n".join(text.replace("\r", "").splitlines()[-lines:]) or "(empty)"
