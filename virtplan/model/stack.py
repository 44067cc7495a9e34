"""The stack: every resource a stack program declared, in declaration order.

Loading runs the program with a fresh Stack as the current registry, so resources
register themselves as they are constructed. Loading never talks to libvirt.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import runpy
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from virtplan.errors import StackLoadError

if TYPE_CHECKING:
    from virtplan.model.resources import VM, Host, Network, Pool, Resource, Volume

R = TypeVar("R", bound="Resource")
DEFAULT_URI_ENV = "VIRTPLAN_URI"

_current: contextvars.ContextVar[Stack | None] = contextvars.ContextVar("virtplan_stack", default=None)


class Stack:
    """A named collection of declared resources, plus stack-wide options."""

    def __init__(self, name: str, path: Path | None = None):
        self.name = name
        self.path = path
        self.resources: list[Resource] = []
        self.template_dir: Path | None = None
        self.source_hash = ""

    def add(self, resource: Resource) -> None:
        self.resources.append(resource)

    def of_kind(self, cls: type[R]) -> list[R]:
        return [r for r in self.resources if isinstance(r, cls)]

    @property
    def hosts(self) -> list[Host]:
        from virtplan.model.resources import Host

        return self.of_kind(Host)

    @property
    def networks(self) -> list[Network]:
        from virtplan.model.resources import Network

        return self.of_kind(Network)

    @property
    def pools(self) -> list[Pool]:
        from virtplan.model.resources import Pool

        return self.of_kind(Pool)

    @property
    def volumes(self) -> list[Volume]:
        from virtplan.model.resources import Volume

        return self.of_kind(Volume)

    @property
    def vms(self) -> list[VM]:
        from virtplan.model.resources import VM

        return self.of_kind(VM)

    def managed(self) -> list[Resource]:
        """Every resource except hosts, in declaration order."""
        from virtplan.model.resources import Host

        return [r for r in self.resources if not isinstance(r, Host)]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def by_address(self) -> dict[str, Resource]:
        return {r.address: r for r in self.managed()}


def register(resource: Resource) -> None:
    """Add a resource to the stack being loaded (no-op outside of loading)."""
    stack = _current.get()
    if stack is not None:
        stack.add(resource)


def current_stack() -> Stack | None:
    """The stack being loaded, for stack programs that want to set options."""
    return _current.get()


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


@contextmanager
def collecting(stack: Stack) -> Iterator[Stack]:
    """Make `stack` the registry for resources constructed inside the block."""
    token = _current.set(stack)
    try:
        yield stack
    finally:
        _current.reset(token)


def load_stack(path: str | os.PathLike[str], host_uris: dict[str, str] | None = None) -> Stack:
    """Run a stack program and return its validated stack.

    `host_uris` overrides host URIs by host name; the environment variable VIRTPLAN_URI
    overrides the stack's default (first declared) host. Raises StackLoadError or
    ValidationError; nothing is contacted.
    """
    from virtplan.model.validate import validate

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
            runpy.run_path(str(file), run_name=f"virtplan_stack_{file.stem}")
    except StackLoadError:
        raise
    except Exception as exc:
        where = _innermost_frame_in(exc, file)
        raise StackLoadError(f"error while running stack {file}{where}: {type(exc).__name__}: {exc}") from exc
    finally:
        if added_path:
            sys.path.remove(folder)
    apply_host_overrides(stack, host_uris or {})
    _anchor_sources(stack, file.resolve().parent)
    validate(stack)
    return stack


def _anchor_sources(stack: Stack, folder: Path) -> None:
    """Relative image paths (Volume(source=...)) are relative to the stack file's folder."""
    for vol in stack.volumes:
        if isinstance(vol.source, str) and not Path(vol.source).is_absolute():
            vol.source = str(folder / vol.source)


def apply_host_overrides(stack: Stack, host_uris: dict[str, str]) -> None:
    """Replace host URIs: by name from `host_uris`, the default host from VIRTPLAN_URI."""
    from virtplan.model.resources import Host

    if not stack.hosts:
        # A stack without a Host gets the implicit local one.
        with collecting(stack):
            Host("local")
        stack.resources.insert(0, stack.resources.pop())
    env_uri = os.environ.get(DEFAULT_URI_ENV)
    if env_uri:
        stack.hosts[0].uri = env_uri
    names = {h.name for h in stack.hosts}
    for name, uri in host_uris.items():
        if name not in names:
            known = ", ".join(sorted(names))
            raise StackLoadError(f"--host {name}=...: the stack has no host {name!r} (hosts: {known})")
        stack.host(name).uri = uri


def _innermost_frame_in(exc: BaseException, file: Path) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename) == file.resolve()]
    return f" (line {frames[-1].lineno})" if frames else ""
