"""What the options every command shares mean, and the one place that turns them into an
engine. Imports no command-line library (typer's side of the options is
`virtplan.cli.params`): `virtplan plan FILE` runs without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtplan.errors import StackLoadError

if TYPE_CHECKING:
    from pathlib import Path

    from virtplan.engine import Engine


class Settings:
    """Process-wide CLI settings (set by the command being run)."""

    debug = False


def set_debug(debug: bool) -> None:
    Settings.debug = debug


def check_format(value: str, allowed: tuple[str, ...], what: str = "--format") -> None:
    """Refuse an unknown --format (or other choice), naming the ones that exist."""
    if value not in allowed:
        raise StackLoadError(f"{what} {value!r}: use {', '.join(allowed[:-1])} or {allowed[-1]}")


def pairs(items: list[str] | None, option: str, example: str) -> dict[str, str]:
    """NAME=VALUE items of a repeatable option, or a usage error naming the option."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise StackLoadError(f"{option} {item!r}: write {example}")
        out[name.strip()] = value.strip()
    return out


def host_overrides(hosts: list[str] | None) -> dict[str, str]:
    """--host NAME=URI items as {name: uri}; a bare URI (which may hold '=' itself, as in
    `qemu+unix:///system?socket=...`) is refused with the form to use."""
    for item in hosts or []:
        name = item.partition("=")[0]
        if ":" in name or "/" in name:
            raise StackLoadError(
                f"--host {item!r} looks like a bare URI; write NAME=URI with the host's name in the stack, "
                f"e.g. --host local={item}"
            )
    return pairs(hosts, "--host", "NAME=URI, e.g. --host local=qemu:///system")


def unreachable(lines: dict[str, str]) -> None:
    """One error line per host that could not be read (`--keep-going`), on stderr."""
    import sys

    for line in lines.values():
        print(f"error: {line}", file=sys.stderr)


def open_engine(stack_file: Path, hosts: list[str] | None, connect_early: bool = False) -> Engine:
    """Load and validate the stack, then its engine.

    With `connect_early` (commands that read every host), the hosts' connections are
    opened, and their domains and volumes read, in the background while the rest of
    virtplan is imported; possibly since start-up, see `virtplan.cli.early` (no host is
    contacted for a stack file that has not validated as it is)."""
    from virtplan.cli import early
    from virtplan.model import load_stack

    try:
        stack = load_stack(stack_file, host_overrides(hosts))
    except BaseException:
        early.forget()
        raise
    opening = early.opening(stack, remember=not hosts) if connect_early else None
    from virtplan.engine import Engine

    return Engine(stack, opening=opening)
