"""What the model's constructors do with what a stack program passes them, and free-text rules.

A stack program is Python, so a misspelled keyword (`VM("x", memroy="1GiB")`) or a missing
one would be a bare `TypeError` from deep inside the constructor, with no resource and no
hint. The model's constructors are wrapped by `lenient` instead: an unknown keyword, a
missing required field or a surplus positional argument is kept on the object as a problem
(with the file and line of the call and, for a misspelling, the field that was probably
meant) and reported by validation with every other error, naming the resource and field.

Free text (descriptions, cloud-init values, kernel command lines, ...) must be printable:
a NUL, ESC or other C0 control character produces XML that does not parse and can hijack
a terminal. `text_problem` says what is wrong; `normalise_newlines` turns CRLF and lone CR
into LF, as every XML parser (and so libvirt) does, so what virtplan compares is what the
host keeps.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., None])

#: A stand-in for a value Pulumi only knows later (`virtplan.pulumi.text`): NUL "po" N NUL.
PLACEHOLDER = re.compile("\x00po(\\d+)\x00")
#: C0 controls (but tab and newline), DEL and the C1 controls: never allowed in free text.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_ANY_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
#: Where a problem found while constructing an object is kept.
PROBLEMS = "_virtplan_problems"


def where_called(depth: int = 2) -> str:
    """ "file:line" of the code that called the constructor (skipping virtplan's own frames)."""
    frame = sys._getframe(depth)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("virtplan.model"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    return f"{shown_path(frame.f_code.co_filename)}:{frame.f_lineno}"


def shown_path(filename: str) -> str:
    """A stack file's path as the user would write it: relative to the working folder
    when it is inside it (stacks run with an absolute `__file__`)."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        return filename
    return filename if relative.startswith("..") else relative


def problems(obj: object) -> list[tuple[str, str]]:
    """(field, message) problems found while `obj` was constructed."""
    found: list[tuple[str, str]] = getattr(obj, PROBLEMS, None) or []
    return found


def lenient(init: F) -> F:
    """Wrap a constructor so that wrong keywords and missing fields become problems of the
    object (reported by validation) instead of a TypeError."""
    sig = inspect.signature(init)
    params = list(sig.parameters.values())[1:]  # without self
    names = [p.name for p in params]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p.name for p in params if p.default is p.empty]
    owner = init.__qualname__.split(".")[0]
    known_names, required_names = frozenset(names), frozenset(required)
    given_by_count = [frozenset(positional[:n]) for n in range(len(positional) + 1)]

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) < len(given_by_count):  # the usual call, checked with set operations only
            given_now = given_by_count[len(args)]
            if (
                known_names.issuperset(kwargs)
                and given_now.isdisjoint(kwargs)
                and required_names.issubset(given_now.union(kwargs))
            ):
                init(self, *args, **kwargs)
                return
        found: list[tuple[str, str]] = []
        site = None
        if len(args) > len(positional):
            site = site or where_called()
            extra = args[len(positional) :]
            args = args[: len(positional)]
            shown = ", ".join(safe_repr(a) for a in extra)
            takes = ", ".join(positional) or "nothing"
            found.append(("arguments", f"{owner}() takes only {takes} positionally, but also got {shown} ({site}); "
                                       "give the other fields by name, e.g. memory='1GiB'"))  # fmt: skip
        given = set(positional[: len(args)])
        known: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in names and key not in given:
                known[key] = value
            elif key in given:
                site = site or where_called()
                found.append((key, f"is given twice, positionally and by name ({site})"))
            else:
                site = site or where_called()
                found.append((key, unknown_field(owner, key, names, site)))
        for name in required:
            if name not in given and name not in known:
                site = site or where_called()
                found.append((name, f"is required ({owner}() without {name}=, {site})"))
                known[name] = None
        object.__setattr__(self, PROBLEMS, found)
        init(self, *args, **known)
        if found:  # __init__ of a dataclass does not keep unknown attributes; make sure
            object.__setattr__(self, PROBLEMS, found)

    return wrapper  # type: ignore[return-value]


def unknown_field(owner: str, key: str, names: list[str], site: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"{owner}() takes {', '.join(names)}"
    return f"{owner}() has no field {key!r} ({site}); {hint}"


def safe_repr(value: object, limit: int = 60) -> str:
    """A short repr for messages (control characters escaped, as repr does)."""
    try:
        text = repr(value)
    except Exception:  # a user's object whose repr fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(value: object) -> str:
    return type(value).__name__


def got(value: object) -> str:
    """ "got str 'x'" for messages about wrong types."""
    return f"got {type_name(value)} {safe_repr(value)}"


def text_problem(value: str, multiline: bool = True) -> str | None:
    """Why `value` cannot be free text (a control character), or None."""
    value = PLACEHOLDER.sub("", value)
    pattern = _CONTROL if multiline else _ANY_CONTROL
    match = pattern.search(value)
    if match is None:
        return None
    allowed = " (tabs and newlines are fine)" if multiline else ""
    return (
        f"contains the control character {escape_controls(match.group())} at position {match.start()}; "
        f"remove it{allowed}"
    )


def normalise_newlines(value: object) -> object:
    """CRLF and lone CR as LF (what any XML parser, and so libvirt, keeps); other values as they are."""
    if isinstance(value, str) and "\r" in value:
        return value.replace("\r\n", "\n").replace("\r", "\n")
    return value


def escape_controls(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters shown as escapes (\\x1b), so a message or a plan can
    never carry a raw terminal escape sequence."""
    pattern = _CONTROL if keep_newlines else _ANY_CONTROL

    def esc(m: re.Match[str]) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(c, f"\\x{ord(c):02x}")

    return pattern.sub(esc, text)
