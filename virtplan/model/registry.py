"""The registry of the stack program being run: resources add themselves to it.

While a stack program runs, the stack it declares is the current registry (a context
variable, so concurrent loads in threads do not mix); every resource constructed then
registers itself. Outside of loading, constructing a resource registers nothing.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from virtplan.model.resources import Resource
    from virtplan.model.stack import Stack

_current: contextvars.ContextVar[Stack | None] = contextvars.ContextVar("virtplan_stack", default=None)


def register(resource: Resource) -> None:
    """Add a resource to the stack being loaded (no-op outside of loading)."""
    stack = _current.get()
    if stack is not None:
        stack.add(resource)


def current_stack() -> Stack | None:
    """The stack being loaded, for stack programs that want to set options."""
    return _current.get()


@contextmanager
def collecting(stack: Stack) -> Iterator[Stack]:
    """Make `stack` the registry for resources constructed inside the block."""
    token = _current.set(stack)
    try:
        yield stack
    finally:
        _current.reset(token)
