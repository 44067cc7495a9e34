"""Help text as people read it: `-h`, no `<bool>`/`<str>` type labels, whole sentences.

typer (0.2x) labels every parameter with its Python type (`--debug <bool>`, `stack <path>`)
and cuts a command's summary mid-sentence in the command list ("Plan, confirm, then apply
through libvirt; or apply a..."). `tidy` walks the click command tree typer builds and
gives every argument and option a metavar that says what to write (STACK, NAME=URI,
SECONDS), flags none, and every command its first sentence as its summary.

Keep this module light (typer only): it runs on every invocation.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

#: What to write for an option's value, where its upper-cased name would not say it.
METAVARS = {
    "host": "NAME=URI",
    "subnet_map": "OLD=NEW",
    "host_map": "SOURCE=TARGET",
    "lock_timeout": "SECONDS",
    "tail_lines": "N",
    "out": "FILE",
    "name_pattern": "GLOB",
}


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every command of the tree with its path of names (the root's path is empty)."""
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from commands(sub, (*path, name))


def first_sentence(text: str) -> str:
    """The first sentence of a help text, on one line."""
    paragraph = " ".join(text.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
    return match.group(1) if match else paragraph


def tidy(root: Any) -> Any:
    """Fix the help of every command under `root` (in place); returns `root`."""
    for _, cmd in commands(root):
        if cmd.help and not cmd.short_help:
            cmd.short_help = first_sentence(cmd.help)
        for param in cmd.params:
            if param.param_type_name == "argument":
                _tidy_argument(param)
            elif not getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = METAVARS.get(param.name or "", (param.name or "value").upper())
    return root


def _tidy_argument(param: Any) -> None:
    name = param.metavar or (param.name or "arg").upper()
    param.metavar = name
    usage = name if param.required else f"[{name}]"
    if param.nargs != 1:
        usage += "..."
    # instance attributes shadow typer's methods: no "<path>" label, "STACK" not "{stack}"
    param.display_type_rich = lambda ctx: None
    param._usage_display_name = lambda: usage
    param.make_metavar = lambda *a, **k: usage
