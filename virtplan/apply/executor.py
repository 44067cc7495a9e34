"""Execute a plan through libvirt.

Hosts are applied in parallel, each with a bounded pool of workers (`Host(workers=)`),
and at most `limit` changes run at once over all hosts (the global limit: `apply
--parallel`, default `DEFAULT_LIMIT`). A change starts once the changes it depends on are
done, on its host or on another (a pool emptied by a migration waits for it), and is
carried out by running the operations of its step (`virtplan.apply.steps`, which
`plan --commands` prints). The first failure stops new
work (running changes finish) and the report says what was done, what failed and what did
not run. Every step is idempotent with respect to a fresh plan: after a crash, planning
again sees what exists (pools and volumes are recorded before they are created) and
converges.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from virtplan.apply.steps import Context, Runtime, operations
from virtplan.documents.render import Renderer
from virtplan.errors import ApplyError
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import Records
from virtplan.model import Stack
from virtplan.plan.changes import Plan, ResourceChange

ProgressFn = Callable[[str, ResourceChange, str | None], None]

#: Changes in flight over all hosts at once unless told otherwise: each host is bounded by
#: its own workers; this bounds what one apply asks of this machine and its connections.
DEFAULT_LIMIT = 32
LIMIT_ENV = "VIRTPLAN_PARALLEL"


def default_limit() -> int:
    """$VIRTPLAN_PARALLEL if set (a positive whole number), else DEFAULT_LIMIT."""
    import os

    from virtplan.errors import VirtplanError

    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT
    if not text.isdigit() or int(text) < 1:
        raise VirtplanError(f"{LIMIT_ENV}={text!r}: write a whole number of changes, 1 or more")
    return int(text)


class Board:
    """What the host appliers share: the changes finished or given up on every host (so a
    change can wait for one on another host) and the global limit on changes in flight."""

    def __init__(self, limit: int):
        self.limit = limit
        self.slots = threading.BoundedSemaphore(limit)
        self.changed = threading.Condition()
        self.done: set[str] = set()
        self.given_up: set[str] = set()  # failed, or not run
        self.in_flight = 0
        self.most_in_flight = 0  # the largest number of changes that ran at once

    def finished(self, address: str, ok: bool) -> None:
        with self.changed:
            (self.done if ok else self.given_up).add(address)
            self.changed.notify_all()

    def gave_up(self, addresses: list[str]) -> None:
        with self.changed:
            self.given_up.update(addresses)
            self.changed.notify_all()

    def wait(self, seconds: float) -> None:
        with self.changed:
            self.changed.wait(seconds)

    def slot(self) -> _Slot:
        return _Slot(self)


class _Slot:
    def __init__(self, board: Board):
        self.board = board

    def __enter__(self) -> None:
        self.board.slots.acquire()
        with self.board.changed:
            self.board.in_flight += 1
            self.board.most_in_flight = max(self.board.most_in_flight, self.board.in_flight)

    def __exit__(self, *exc: object) -> None:
        with self.board.changed:
            self.board.in_flight -= 1
        self.board.slots.release()


@dataclass
class Outcome:
    address: str
    action: str
    status: str  # done | failed | not run
    error: str | None = None
    seconds: float = 0.0


@dataclass
class ApplyReport:
    outcomes: list[Outcome] = field(default_factory=list)
    most_in_flight: int = 0  # the most changes that ran at once, over all hosts

    @property
    def ok(self) -> bool:
        return all(o.status == "done" for o in self.outcomes)

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def summary(self) -> str:
        lines = []
        for status in ("done", "failed", "not run"):
            items = self.by_status(status)
            if items:
                lines.append(f"{status}: " + ", ".join(f"{o.action} {o.address}" for o in items))
        for o in self.by_status("failed"):
            lines.append(f"error in {o.address}: {o.error}")
        return "\n".join(lines)


def apply_plan(
    plan: Plan,
    stack: Stack,
    renderer: Renderer,
    observed: dict[str, HostState],
    store: Records,
    connections: dict[str, Any],
    progress: ProgressFn | None = None,
    limit: int | None = None,
) -> ApplyReport:
    """Apply every change of `plan`, at most `limit` at once over all hosts (default:
    `default_limit()`); raise ApplyError (with the report) on failure. `connections` holds
    every host a change runs on or moves a VM from."""
    report = ApplyReport()
    lock = threading.Lock()
    hosts = [h for h in stack.hosts if plan.for_host(h.name)]
    board = Board(limit if limit is not None else default_limit())
    everywhere = {c.address for c in plan.changes}

    def run_host(name: str, workers: int) -> None:
        context = Context.at(stack, renderer, observed[name], store, plan, observed)
        applier = HostApplier(connections[name], context, board, connections)
        try:
            outcomes = applier.run(plan.for_host(name), workers, progress, everywhere)
        except BaseException as exc:  # never leave the other hosts waiting for this one
            outcomes = [Outcome(c.address, c.action.value, "failed", _error_text(exc)) for c in plan.for_host(name)]
            board.gave_up([c.address for c in plan.for_host(name)])
        with lock:
            report.outcomes.extend(outcomes)

    threads = [threading.Thread(target=run_host, args=(h.name, h.workers)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.most_in_flight = board.most_in_flight
    if not report.ok:
        raise ApplyError("apply stopped at a failure:\n" + report.summary(), report)
    return report


class HostApplier:
    """Applies the changes of one host over one libvirt connection, and keeps what the run
    learns across them (the specs applied, the host's backing map for the last guard)."""

    def __init__(self, conn: Any, context: Context, board: Board | None = None, peers: dict[str, Any] | None = None):
        self.conn, self.context = conn, context
        self.host, self.store = context.host, context.store
        self.board = board if board is not None else Board(default_limit())
        self.peers = peers or {}
        self.applied: dict[str, dict[str, Any]] = {}  # address -> {"applied": spec}, written by run()
        self._applied_lock = threading.Lock()

    # -- scheduling -------------------------------------------------------------------
    def run(
        self,
        changes: list[ResourceChange],
        workers: int,
        progress: ProgressFn | None,
        in_plan: set[str] | None = None,
    ) -> list[Outcome]:
        """Run `changes` (this host's), each once what it depends on in the plan (`in_plan`:
        every host's addresses; by default this host's) is done on whichever host."""
        in_plan = in_plan if in_plan is not None else {c.address for c in changes}
        board = self.board
        pending = list(changes)
        outcomes: list[Outcome] = []
        failed = False
        running: dict[Future[None], tuple[ResourceChange, float]] = {}

        def ready(change: ResourceChange) -> bool:
            return all(d in board.done for d in change.depends_on if d in in_plan)

        def blocked(change: ResourceChange) -> bool:  # waits for a change that will never be done
            return any(d in board.given_up for d in change.depends_on if d in in_plan)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"apply-{self.host.name}") as pool:
            while pending or running:
                if not failed:
                    for change in [c for c in pending if ready(c)]:
                        pending.remove(change)
                        if progress:
                            progress("start", change, None)
                        running[pool.submit(self.execute, change)] = (change, time.monotonic())
                if not running:
                    if failed or not pending or all(blocked(c) for c in pending):
                        break
                    board.wait(0.2)  # for a change on another host
                    continue
                finished, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    change, started = running.pop(future)
                    seconds = time.monotonic() - started
                    error = future.exception()
                    if error is None:
                        board.finished(change.address, True)
                        outcomes.append(Outcome(change.address, change.action.value, "done", None, seconds))
                        if progress:
                            progress("done", change, None)
                    else:
                        failed = True
                        board.finished(change.address, False)
                        message = _error_text(error)
                        outcomes.append(Outcome(change.address, change.action.value, "failed", message, seconds))
                        if progress:
                            progress("failed", change, message)
        board.gave_up([c.address for c in pending])
        outcomes += [Outcome(c.address, c.action.value, "not run") for c in pending]
        if self.applied:
            self.store.put_many(self.host.uri, self.applied)
        return outcomes

    def execute(self, change: ResourceChange) -> None:
        """Run the operations of the change's step (virtplan.apply.steps), one after the other."""
        rt = Runtime(self.context, self)
        with self.board.slot():
            try:
                for op in operations(change, self.context):
                    op.run(rt)
            except BaseException:
                rt.undo()  # e.g. drop an intent whose create failed: nothing of ours was made
                raise

    def peer(self, host: str) -> Any:
        """The connection to another host of the plan (the source of a VM moved here)."""
        return self.peers[host]

    def note_applied(self, change: ResourceChange) -> None:
        """Remember the spec applied to this address; `run` records them all in one write
        (one write per change would cost a ledger write per object), so `virtplan drift` can
        tell changes made outside virtplan from the stack's own pending changes."""
        from virtplan.plan.planner import desired_spec

        resource = self.context.desired.get(change.address)
        if resource is None:
            return
        try:
            spec = desired_spec(resource, self.context.renderer)
        except (ValueError, OSError):
            return
        with self._applied_lock:
            self.applied[change.address] = {"applied": spec}


def _error_text(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0] if len(text) > 500 else text
