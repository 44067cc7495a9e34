"""Loading a stack program: run it with a fresh stack as the registry, then validate.

Loading never talks to libvirt: an invalid stack is reported before any host is contacted.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import sys
from pathlib import Path

from virtplan.errors import StackLoadError
from virtplan.model.fields import escape_controls, shown_path
from virtplan.model.identity import check_identity_part, project_of
from virtplan.model.registry import _current, collecting
from virtplan.model.resources import Host
from virtplan.model.stack import Stack
from virtplan.model.validate import validate

DEFAULT_URI_ENV = "VIRTPLAN_URI"


def use_templates(path: str | os.PathLike[str]) -> None:
    """Let the current stack override any template with a file of the same name in `path`.

    A relative path is taken from the stack file's folder.
    """
    stack = _current.get()
    if stack is None:
        raise StackLoadError("use_templates() can only be called from a stack program")
    folder = Path(path)
    if not folder.is_absolute() and stack.path is not None:
        folder = stack.path.parent / folder
    stack.template_dir = folder


def load_stack(path: str | os.PathLike[str], host_uris: dict[str, str] | None = None) -> Stack:
    """Run a stack program and return its validated stack.

    `host_uris` overrides host URIs by host name; the environment variable VIRTPLAN_URI
    overrides the stack's default (first declared) host. Raises StackLoadError or
    ValidationError; nothing is contacted.
    """
    file = Path(path)
    if not file.is_file():
        raise StackLoadError(f"stack file {file} not found")
    stack = Stack(file.stem, file.resolve())
    stack.source_hash = hashlib.sha256(file.read_bytes()).hexdigest()
    folder = str(file.resolve().parent)
    added_path = folder not in sys.path
    if added_path:
        sys.path.insert(0, folder)
    try:
        with collecting(stack):
            runpy.run_path(str(file.resolve()), run_name=f"virtplan_stack_{file.stem}")  # __file__ absolute
    except StackLoadError:
        raise
    except SystemExit as exc:  # never a silent success: the stack was not declared to its end
        where = _innermost_frame_in(exc, file)
        raise StackLoadError(
            f"stack {file} called sys.exit({exc.code!r}) at {where or 'load time'}, before it was fully declared; "
            "a stack program declares resources and returns (raise an exception to stop with an error). "
            "Nothing was changed"
        ) from None
    except Exception as exc:
        where = _innermost_frame_in(exc, file)
        hint = _suggestion(exc)
        message = escape_controls(f"{type(exc).__name__}: {exc}{hint}")
        raise StackLoadError(f"error while running stack {file}{' at ' + where if where else ''}: {message}") from exc
    finally:
        if added_path:
            sys.path.remove(folder)
    if not stack.declared_name:
        try:
            check_identity_part(stack.name, "stack name")
        except StackLoadError as exc:
            raise StackLoadError(
                f"{exc}; it comes from the file name {escape_controls(file.name)!r}: rename the file, or declare the "
                "name in the program with name_stack('...')"
            ) from None
    if not stack.declared_project:
        stack.project = project_of(file.resolve())
    apply_host_overrides(stack, host_uris or {})
    _anchor_sources(stack, file.resolve().parent)
    return validate(stack)  # the concrete stack (see virtplan.model.placement)


def _anchor_sources(stack: Stack, folder: Path) -> None:
    """Relative image paths (Volume(source=...)) are relative to the stack file's folder."""
    from virtplan.model.images import is_url

    for vol in stack.volumes:
        if isinstance(vol.source, str) and not is_url(vol.source) and not Path(vol.source).is_absolute():
            vol.source = str(folder / vol.source)


def apply_host_overrides(stack: Stack, host_uris: dict[str, str]) -> None:
    """Replace host URIs: by name from `host_uris`, the default host from VIRTPLAN_URI."""
    if not stack.hosts:
        # A stack without a Host gets the implicit local one.
        with collecting(stack):
            Host("local")
        stack.resources.insert(0, stack.resources.pop())
    env_uri = os.environ.get(DEFAULT_URI_ENV)
    if env_uri:
        stack.hosts[0].uri = env_uri
    names = {h.name for h in stack.hosts if isinstance(h.name, str)}
    for name, uri in host_uris.items():
        if name not in names:
            known = ", ".join(sorted(names))
            raise StackLoadError(f"--host {name}=...: the stack has no host {name!r} (hosts: {known})")
        stack.host(name).uri = uri


def _innermost_frame_in(exc: BaseException, file: Path) -> str:
    """ "file:line" of the last frame of the stack file in the exception's traceback, or ""."""
    import traceback  # (only a stack that fails needs it)

    target = file.resolve()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == target]
    return f"{shown_path(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""


def _suggestion(exc: BaseException) -> str:
    """ "; did you mean 'x'?" for a misspelled name or attribute, as Python's own traceback says."""
    import builtins
    import difflib

    candidates: list[str] = []
    name = getattr(exc, "name", None)
    if isinstance(exc, NameError) and isinstance(name, str):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            candidates = [*tb.tb_frame.f_locals, *tb.tb_frame.f_globals, *dir(builtins)]
    elif isinstance(exc, AttributeError) and isinstance(name, str):
        candidates = [a for a in dir(getattr(exc, "obj", None)) if not a.startswith("_")]
    close = difflib.get_close_matches(name, candidates, n=1) if isinstance(name, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""
