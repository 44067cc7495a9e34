"""What steps and operations are made of.

A step turns one planned change into operations. Each operation has two forms that do
the same thing: `run(rt)` through libvirt (apply) and `shell(ctx)`, the equivalent shell
commands (`plan --commands`). Steps read only the `Context` (the plan's view of the host);
what can only be known while running is decided inside an operation, in both forms.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from virtplan.documents.render import Renderer
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import Records
from virtplan.model import Resource, Stack
from virtplan.plan.changes import Action, Plan, ResourceChange

CHUNK = 1024 * 1024  # bytes per write when streaming a volume's content to the host


@dataclass
class Context:
    """What a step and an operation's shell form read: the stack, the renderer, the host as
    the plan observed it, the ownership record, and which addresses the plan deletes.

    `records` are the stack's records on this host as they were before any change ran
    (`at` takes them): steps read those, so a step decides the same whether it is printed
    or run after other changes (which add and forget records) already ran."""

    stack: Stack
    renderer: Renderer
    host: HostState
    store: Records
    desired: dict[str, Resource]
    deleted: set[str] = field(default_factory=set)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    others: dict[str, HostState] = field(default_factory=dict)  # the other hosts, as observed (moves)

    @classmethod
    def at(
        cls,
        stack: Stack,
        renderer: Renderer,
        host: HostState,
        store: Records,
        plan: Plan,
        others: dict[str, HostState] | None = None,
    ) -> Context:
        """The context of `plan`'s changes on `host`, with the records as they are now;
        `others` are the plan's other hosts as observed (a VM moving here comes from one)."""
        deleted = {c.address for c in plan.changes if c.action == Action.DELETE}
        records = copy.deepcopy(store.records(host.uri))
        return cls(stack, renderer, host, store, stack.by_address(), deleted, records, dict(others or {}))

    def resource(self, change: ResourceChange) -> Any:
        return self.desired[change.address]

    def observed(self, change: ResourceChange) -> ObservedObject | None:
        return self.host.get(change.kind, change.key)


class Bookkeeping(Protocol):
    """What an apply run keeps across the changes of one host (see the executor)."""

    conn: Any

    def note_applied(self, change: ResourceChange) -> None: ...

    def peer(self, host: str) -> Any:
        """The connection to another host of the plan (where a VM moved here comes from)."""
        ...


class Runtime:
    """An operation's run form: one host's libvirt connection, the handles of one change
    looked up or created so far, facts its operations learnt (say, that a pool's
    directory was built), and the apply run's bookkeeping."""

    def __init__(self, ctx: Context, run: Bookkeeping, say: Callable[[str], None] | None = None, conn: Any = None):
        self.ctx, self.run = ctx, run
        self.conn = conn if conn is not None else run.conn  # every call of one change goes over one connection
        self._say = say
        self.facts: dict[str, Any] = {}
        self._handles: dict[tuple[str, str], Any] = {}
        self._undo: list[Callable[[], None]] = []

    def say(self, text: str) -> None:
        """Tell the user what this change waits for (shown as a progress line)."""
        if self._say is not None:
            self._say(text)

    def on_failure(self, action: Callable[[], None]) -> None:
        """Run `action` if a later operation of this change fails (last registered, first run)."""
        self._undo.append(action)

    def settled(self) -> None:
        """What was registered with `on_failure` no longer applies (the change's object exists)."""
        self._undo.clear()

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def remember(self, kind: str, key: str, handle: Any) -> Any:
        self._handles[(kind, key)] = handle
        return handle

    def handle(self, kind: str, key: str) -> Any:
        """The libvirt object of `kind` ("vm", "network", "pool", "volume") named `key`."""
        if (kind, key) not in self._handles:
            if kind == "vm":
                found = self.conn.lookupByName(key)
            elif kind == "network":
                found = self.conn.networkLookupByName(key)
            elif kind == "pool":
                found = self.conn.storagePoolLookupByName(key)
            else:
                pool, _, name = key.partition("/")
                found = self.handle("pool", pool).storageVolLookupByName(name)
            self._handles[(kind, key)] = found
        return self._handles[(kind, key)]


class Operation(abc.ABC):
    """One thing done to a host, in its two forms: the libvirt calls, and their virsh twin."""

    @abc.abstractmethod
    def run(self, rt: Runtime) -> None:
        """Do it through libvirt."""

    @abc.abstractmethod
    def shell(self, ctx: Context) -> list[str]:
        """The same as shell lines (`plan --commands`)."""
