"""Execute a plan through libvirt.

Hosts are applied in parallel, each with a bounded pool of workers; a change starts once
the changes it depends on are done, and is carried out by running the operations of its
step (`virtplan.apply.steps`, which `plan --commands` prints). The first failure stops new
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
) -> ApplyReport:
    """Apply every change of `plan`; raise ApplyError (with the report) on failure."""
    report = ApplyReport()
    lock = threading.Lock()
    hosts = [h for h in stack.hosts if plan.for_host(h.name)]

    def run_host(name: str, workers: int) -> None:
        context = Context.at(stack, renderer, observed[name], store, plan)
        applier = HostApplier(connections[name], context)
        outcomes = applier.run(plan.for_host(name), workers, progress)
        with lock:
            report.outcomes.extend(outcomes)

    threads = [threading.Thread(target=run_host, args=(h.name, h.workers)) for h in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not report.ok:
        raise ApplyError("apply stopped at a failure:\n" + report.summary(), report)
    return report


class HostApplier:
    """Applies the changes of one host over one libvirt connection, and keeps what the run
    learns across them (the specs applied, the host's backing map for the last guard)."""

    def __init__(self, conn: Any, context: Context):
        self.conn, self.context = conn, context
        self.host, self.store = context.host, context.store
        self.applied: dict[str, dict[str, Any]] = {}  # address -> {"applied": spec}, written by run()
        self._applied_lock = threading.Lock()

    # -- scheduling -------------------------------------------------------------------
    def run(self, changes: list[ResourceChange], workers: int, progress: ProgressFn | None) -> list[Outcome]:
        in_plan = {c.address for c in changes}
        pending = list(changes)
        done: set[str] = set()
        outcomes: list[Outcome] = []
        failed = False
        running: dict[Future[None], tuple[ResourceChange, float]] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"apply-{self.host.name}") as pool:
            while pending or running:
                if not failed:
                    for change in [c for c in pending if all(d in done for d in c.depends_on if d in in_plan)]:
                        pending.remove(change)
                        if progress:
                            progress("start", change, None)
                        running[pool.submit(self.execute, change)] = (change, time.monotonic())
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    change, started = running.pop(future)
                    seconds = time.monotonic() - started
                    error = future.exception()
                    if error is None:
                        done.add(change.address)
                        outcomes.append(Outcome(change.address, change.action.value, "done", None, seconds))
                        if progress:
                            progress("done", change, None)
                    else:
                        failed = True
                        message = _error_text(error)
                        outcomes.append(Outcome(change.address, change.action.value, "failed", message, seconds))
                        if progress:
                            progress("failed", change, message)
        outcomes += [Outcome(c.address, c.action.value, "not run") for c in pending]
        if self.applied:
            self.store.put_many(self.host.uri, self.applied)
        return outcomes

    def execute(self, change: ResourceChange) -> None:
        """Run the operations of the change's step (virtplan.apply.steps), one after the other."""
        rt = Runtime(self.context, self)
        try:
            for op in operations(change, self.context):
                op.run(rt)
        except BaseException:
            rt.undo()  # e.g. drop an intent whose create failed: nothing of ours was made
            raise

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
