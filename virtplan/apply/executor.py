"""Execute a plan through libvirt.

Hosts are applied in parallel, each with a bounded pool of workers (`Host(workers=)`, else
sized from the host: `virtplan.apply.concurrency`),
and at most `limit` changes run at once over all hosts (the global limit: `apply
--parallel`, default `DEFAULT_LIMIT`). A change starts once the changes it depends on are
done, on its host or on another (a pool emptied by a migration waits for it), and is
carried out by running the operations of its step (`virtplan.apply.steps`, which
`plan --commands` prints). At most `workers` changes of a host are started at a time, so
that a stop is immediate: after the first failure (on any host), an interrupt
(`Control.interrupt`, Ctrl-C in the CLI) or a lost connection, the changes in flight
finish and nothing new starts. The report has one outcome per
planned change: done, failed or not started. Every step is idempotent with respect to a
fresh plan: after a crash, planning again sees what exists (pools and volumes are
recorded before they are created) and converges.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from virtplan.apply.concurrency import workers_for
from virtplan.apply.lanes import Lanes
from virtplan.apply.steps import Context, Runtime, operations
from virtplan.documents.render import Renderer
from virtplan.errors import ApplyError, ApplyInterrupted, HostLost
from virtplan.hosts.observe import HostState
from virtplan.hosts.records import Records
from virtplan.model import Stack
from virtplan.plan.changes import Action, Plan, ResourceChange

#: progress(event, change, text): "start", "done", "failed" (text: the error) and "wait"
#: (text: what an operation waits for, e.g. a guest's shutdown).
ProgressFn = Callable[[str, ResourceChange, str | None], None]

DONE, FAILED, NOT_STARTED = "done", "failed", "not started"
#: How often a scheduler looks at the stop flag while changes are in flight.
_TICK = 0.1


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


def what(change: ResourceChange) -> str:
    """A change as a report names it: "create local/vm/web1"."""
    return f"{change.action.value} {change.address}"


@dataclass
class Outcome:
    address: str
    action: str
    status: str  # done | failed | not started
    error: str | None = None
    seconds: float = 0.0


@dataclass
class LostHost:
    """The connection to a host broke during the apply."""

    host: str
    uri: str
    in_flight: list[str]  # the changes in flight on that host then ("create local/vm/a")
    error: str


class Control:
    """What all the schedulers of one apply share with whoever watches it: the stop flag
    (first failure, interrupt, lost connection) and which changes are in flight.

    `interrupt()` is safe to call from a signal handler: it only sets flags and counts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: str | None = None  # why new changes no longer start: "failed" | "interrupted" | "lost"
        self.interrupted = False
        self.total = 0
        self.started = 0
        self.in_flight: dict[str, ResourceChange] = {}
        self.lost: list[LostHost] = []
        self._appliers: list[HostApplier] = []

    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason

    def interrupt(self) -> tuple[int, int]:
        """Start nothing new; returns (changes in flight, changes that will not start)."""
        self.interrupted = True
        if self.reason is None:
            self.reason = "interrupted"
        return len(self.in_flight), self.total - self.started

    def flying(self) -> list[ResourceChange]:
        return list(self.in_flight.values())

    def save_records(self) -> None:
        """Write what the finished changes applied (see HostApplier.write_records); used when
        the in-flight changes are abandoned and their threads will never get to it."""
        for applier in list(self._appliers):
            with contextlib.suppress(Exception):
                applier.write_records()

    # -- used by the schedulers --
    def _started(self, change: ResourceChange) -> None:
        with self._lock:
            self.started += 1
            self.in_flight[change.address] = change

    def _finished(self, change: ResourceChange) -> None:
        with self._lock:
            self.in_flight.pop(change.address, None)


class Board:
    """What the host appliers share to schedule: the changes finished or given up on every
    host (so a change can wait for one on another host) and the global limit on changes in
    flight."""

    def __init__(self, limit: int):
        self.limit = limit
        self.slots = threading.BoundedSemaphore(limit)
        self.changed = threading.Condition()
        self.done: set[str] = set()
        self.given_up: set[str] = set()  # failed, or not started
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

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """One of the global limit's slots, held while a change runs."""
        with self.slots:
            with self.changed:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                yield
            finally:
                with self.changed:
                    self.in_flight -= 1


@dataclass
class ApplyReport:
    outcomes: list[Outcome] = field(default_factory=list)
    interrupted: bool = False
    lost: list[LostHost] = field(default_factory=list)
    most_in_flight: int = 0  # the most changes that ran at once, over all hosts

    @property
    def ok(self) -> bool:
        return bool(self.outcomes) and all(o.status == DONE for o in self.outcomes) and not self.interrupted

    def by_status(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    def counts(self) -> str:
        return ", ".join(f"{len(self.by_status(s))} {s}" for s in (DONE, FAILED, NOT_STARTED))

    def summary(self) -> str:
        lines = []
        for status in (DONE, FAILED, NOT_STARTED):
            items = self.by_status(status)
            if items:
                lines.append(f"{status}: " + ", ".join(f"{o.action} {o.address}" for o in items))
        for o in self.by_status(FAILED):
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
    control: Control | None = None,
    limit: int | None = None,
) -> ApplyReport:
    """Apply every change of `plan`, at most `limit` at once over all hosts (default:
    `default_limit()`); raise ApplyError (with the report) unless all are done:
    ApplyInterrupted after `control.interrupt()`, HostLost when a connection broke.
    `connections` holds every host a change runs on or moves a VM from."""
    control = control or Control()
    control.total = len(plan.changes)
    report = ApplyReport()
    lock = threading.Lock()
    hosts = [h for h in stack.hosts if plan.for_host(h.name)]
    board = Board(limit if limit is not None else default_limit())
    everywhere = {c.address for c in plan.changes}

    def run_host(name: str) -> None:
        changes = plan.for_host(name)
        applier: HostApplier | None = None
        lanes: Lanes | None = None
        try:
            host = stack.host(name)
            deleting = all(c.action == Action.DELETE for c in changes)
            workers = workers_for(host, connections[name], len(changes), deleting)  # Host.workers, or from the host
            lanes = Lanes(connections[name], host.uri, name, workers)
            context = Context.at(stack, renderer, observed[name], store, plan, observed)
            applier = HostApplier(connections[name], context, control, board, connections, lanes)
            outcomes = applier.run(changes, workers, progress, everywhere)
        except BaseException as exc:  # a bug or a dead connection outside any change: no outcome may be lost
            control.stop("failed")
            message = _error_text(exc)
            outcomes = list(applier.outcomes) if applier is not None else []
            seen = {o.address for o in outcomes}
            outcomes += [Outcome(c.address, c.action.value, FAILED, message) for c in changes if c.address not in seen]
            board.gave_up([c.address for c in changes])  # never leave the other hosts waiting for this one
        finally:
            if lanes is not None:
                lanes.close()
        with lock:
            report.outcomes.extend(outcomes)

    threads = [threading.Thread(target=run_host, args=(h.name,), name=f"apply-{h.name}", daemon=True) for h in hosts]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):  # short joins: a signal handler runs in between
        for t in threads:
            t.join(_TICK)
    order = {c.address: i for i, c in enumerate(plan.changes)}
    report.outcomes.sort(key=lambda o: order.get(o.address, len(order)))
    report.interrupted, report.lost = control.interrupted, list(control.lost)
    report.most_in_flight = board.most_in_flight
    if report.lost:
        raise HostLost(lost_message(report), report)
    if report.interrupted:
        raise ApplyInterrupted(f"apply interrupted: {report.counts()}\n{report.summary()}", report)
    if not report.ok:
        raise ApplyError(f"apply stopped at a failure ({report.counts()}):\n" + report.summary(), report)
    return report


def lost_message(report: ApplyReport) -> str:
    """One line: which host was lost, its URI, what was in flight, what it means."""
    parts = []
    for lost in report.lost:
        flying = ", ".join(lost.in_flight) or "nothing"
        parts.append(
            f"lost the connection to host {lost.host!r} ({lost.uri}) during the apply; in flight then, and "
            f"maybe half-done: {flying}"
        )
    return (
        f"{'; '.join(parts)} ({report.counts()}). libvirt said: {report.lost[0].error}. "
        "Re-run `virtplan apply` once the host answers: it converges."
    )


class HostApplier:
    """Applies the changes of one host over its libvirt connection (or `lanes` of them, see
    virtplan.apply.lanes), and keeps what the run learns across them (the specs applied,
    the host's backing map for the last guard)."""

    def __init__(
        self,
        conn: Any,
        context: Context,
        control: Control | None = None,
        board: Board | None = None,
        peers: dict[str, Any] | None = None,
        lanes: Lanes | None = None,
    ):
        self.conn, self.context = conn, context
        self.lanes = lanes
        self.host, self.store = context.host, context.store
        self.control = control or Control()
        self.board = board if board is not None else Board(default_limit())
        self.peers = peers or {}
        self.applied: dict[str, dict[str, Any]] = {}  # address -> {"applied": spec}, written by run()
        self._applied_lock = threading.Lock()
        self._written: set[str] = set()
        self._progress: ProgressFn | None = None
        self.outcomes: list[Outcome] = []
        self.control._appliers.append(self)

    # -- scheduling -------------------------------------------------------------------
    def run(
        self,
        changes: list[ResourceChange],
        workers: int,
        progress: ProgressFn | None,
        in_plan: set[str] | None = None,
    ) -> list[Outcome]:
        """Start each of `changes` (this host's) once what it depends on in the plan
        (`in_plan`: every host's addresses; by default this host's) is done on whichever
        host, at most `workers` at a time; once the control says stop, only finish what is
        in flight."""
        self._progress = progress
        in_plan = in_plan if in_plan is not None else {c.address for c in changes}
        board = self.board
        pending = list(changes)
        outcomes = self.outcomes

        def ready(change: ResourceChange) -> bool:
            return all(d in board.done for d in change.depends_on if d in in_plan)

        def blocked(change: ResourceChange) -> bool:  # waits for a change that will never be done
            return any(d in board.given_up for d in change.depends_on if d in in_plan)

        running: dict[Future[None], tuple[ResourceChange, float]] = {}
        workers = max(1, workers)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"apply-{self.host.name}")
        try:
            while pending or running:
                if not self.control.stopping:
                    for change in [c for c in pending if ready(c)][: workers - len(running)]:
                        pending.remove(change)
                        self.control._started(change)
                        self._tell("start", change, None)
                        running[pool.submit(self.execute, change)] = (change, time.monotonic())
                if not running:
                    if self.control.stopping or not pending or all(blocked(c) for c in pending):
                        break  # stopped, or what is left waits for changes that did not run
                    board.wait(_TICK)  # for a change on another host
                    continue
                finished, _ = wait(running, timeout=_TICK, return_when=FIRST_COMPLETED)
                for future in finished:
                    change, started = running.pop(future)
                    seconds = time.monotonic() - started
                    error = future.exception()
                    if error is None:
                        self.control._finished(change)
                        board.finished(change.address, True)
                        outcomes.append(Outcome(change.address, change.action.value, DONE, None, seconds))
                        self._tell("done", change, None)
                        continue
                    if self._connection_lost(error):
                        self._lost(error, [change, *(c for c, _ in running.values())])
                    self.control._finished(change)
                    board.finished(change.address, False)
                    self.control.stop("failed")
                    message = _error_text(error)
                    outcomes.append(Outcome(change.address, change.action.value, FAILED, message, seconds))
                    self._tell("failed", change, message)
        finally:
            pool.shutdown(wait=True)
            board.gave_up([c.address for c in pending])
            outcomes += [Outcome(c.address, c.action.value, NOT_STARTED) for c in pending]
            with contextlib.suppress(Exception):  # a lost connection is reported as such
                self.write_records()
        return outcomes

    def write_records(self) -> None:
        """Record the specs applied so far (one write for the whole run, not one per change)."""
        with self._applied_lock:
            fresh = {a: v for a, v in self.applied.items() if a not in self._written}
            self._written |= set(fresh)
        if fresh:
            self.store.put_many(self.host.uri, fresh)

    def _connection_lost(self, error: BaseException) -> bool:
        import libvirt

        if not isinstance(error, libvirt.libvirtError):
            return False
        if error.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE):
            return True
        try:
            return not self.conn.isAlive()
        except libvirt.libvirtError:
            return True

    def _lost(self, error: BaseException, flying: list[ResourceChange]) -> None:
        with self.control._lock:
            if any(x.host == self.host.name for x in self.control.lost):
                return
            self.control.lost.append(LostHost(self.host.name, self.host.uri, [what(c) for c in flying],
                                              _error_text(error).splitlines()[0]))  # fmt: skip
        self.control.stop("lost")

    def execute(self, change: ResourceChange) -> None:
        """Run the operations of the change's step (virtplan.apply.steps), one after the other."""
        with self.board.slot(), self._lane() as conn:
            rt = Runtime(self.context, self, say=lambda text: self.say(change, text), conn=conn)
            try:
                for op in operations(change, self.context):
                    op.run(rt)
            except BaseException:
                with contextlib.suppress(Exception):  # the undo must not hide why the change failed
                    rt.undo()  # e.g. drop an intent whose create failed: nothing of ours was made
                raise

    @contextlib.contextmanager
    def _lane(self) -> Iterator[Any]:
        if self.lanes is None:
            yield self.conn
        else:
            with self.lanes.lane() as conn:
                yield conn

    def peer(self, host: str) -> Any:
        """The connection to another host of the plan (the source of a VM moved here)."""
        return self.peers[host]

    def say(self, change: ResourceChange, text: str) -> None:
        """An operation says what it waits for (a guest's shutdown, ...)."""
        self._tell("wait", change, text)

    def _tell(self, event: str, change: ResourceChange, text: str | None) -> None:
        """Report progress; a failure to print never stops the apply or loses an outcome."""
        if self._progress is None:
            return
        try:
            self._progress(event, change, text)
        except Exception as exc:
            import sys

            print(f"virtplan: could not show progress ({type(exc).__name__}: {exc})", file=sys.stderr)

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
    """An error as libvirt (or QEMU) wrote it, every line of it: the last line often says
    what went wrong ("Is another process using the image [...]?")."""
    return str(error).strip() or type(error).__name__
