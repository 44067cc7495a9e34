"""The engine: one stack, its hosts' connections, and observe -> plan -> apply.

The CLI, the Pulumi providers and the Python API all go through this class, so they
share ownership rules, planning and apply behaviour. Connections are opened lazily (one
per host) and closed by `close()` or the context manager.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.cache import stack_cache
from virtplan.documents.render import Identity, Renderer
from virtplan.errors import ConfirmationRequired, FieldError
from virtplan.hosts.connection import Opening, connect
from virtplan.hosts.ledger import HostLedger, store_for
from virtplan.hosts.migrate import Overlay, legacy_file, legacy_records, migrate
from virtplan.hosts.observe import HostState, dhcp_leases, observe_host
from virtplan.hosts.records import HostRecords, Records
from virtplan.hosts.snapshots import observe_snapshots
from virtplan.hosts.speccache import FILE_NAME, SpecCache
from virtplan.model import VM, Network, Stack, Volume
from virtplan.model.secrets import PROCESS_KEY, keyed_digest
from virtplan.plan.planner import Plan, PlanError, make_plan
from virtplan.plan.protection import check_plan

if TYPE_CHECKING:  # apply and lock machinery: imported by the commands that apply (not by plan)
    from virtplan.apply.executor import ApplyReport, Control, ProgressFn
    from virtplan.hosts.locks import HostLocks
    from virtplan.hosts.readahead import ReadAhead
    from virtplan.plan.drift import DriftReport


@dataclass
class Observation:
    """Observed hosts plus the renderer that knows their facts and kept identities.

    `unreachable` (host name -> one line naming the host, its URI and the cause) is filled
    only by `observe(keep_going=True)`: those hosts are missing from `hosts`."""

    hosts: dict[str, HostState]
    renderer: Renderer
    unreachable: dict[str, str] = field(default_factory=dict)
    #: Placed VMs that fit nowhere now that their hosts were read (refused when planning).
    placement_errors: list[FieldError] = field(default_factory=list)


class Engine:
    """Runs one stack against its hosts."""

    def __init__(self, stack: Stack, store: Records | None = None, opening: Opening | None = None):
        self.stack = stack
        self._opening = opening  # connections already being opened (see virtplan.hosts.connection.Opening)
        self.host_records = HostRecords(stack.key, self._ledger)
        self.store: Records = store if store is not None else self.host_records
        self.legacy = legacy_file(stack) if store is None else None
        if self.legacy is not None:  # records of virtplan 0.1 not moved to the hosts yet
            self.store = Overlay(self.host_records, legacy_records(self.legacy))
        self._conns: dict[str, Any] = {}
        self._records_conns: dict[str, Any] = {}  # the ledgers' own connections during apply
        self._ahead: dict[str, ReadAhead | None] = {}  # read ahead per host, once taken from the opening
        self._lock = threading.Lock()
        self._host_locks: dict[str, threading.Lock] = {}
        self._locks: HostLocks | None = None
        self.cache = SpecCache(stack_cache(stack.key, FILE_NAME))
        self.notes: list[str] = []  # what housekeeping left for later (e.g. another stack was busy)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # the cache is disposable; never fail on it
            self.cache.save()
        if self._opening is not None:
            self._opening.close()
        from virtplan.hosts.readahead import close_connection

        for conn in [*self._conns.values(), *self._records_conns.values()]:
            close_connection(conn)  # once the reads ahead on it, dropped or not, stopped
        self._conns.clear()
        self._records_conns.clear()

    def connection(self, host: str) -> Any:
        """The host's connection, opened on first use. Hosts connect in parallel (a lock per
        host): over qemu+ssh each connection costs a few hundred milliseconds."""
        with self._lock:
            if host in self._conns:
                return self._conns[host]
            lock = self._host_locks.setdefault(host, threading.Lock())
        with lock:
            with self._lock:
                if host in self._conns:
                    return self._conns[host]
            uri = self.stack.host(host).uri
            conn = self._opening.take(host, uri) if self._opening is not None else None
            if conn is None:
                conn = connect(uri, host)
            with self._lock:
                self._conns[host] = conn
            return conn

    def _ledger(self, uri: str) -> HostLedger:
        """This stack's ledger on the host at `uri` (see virtplan.hosts.ledger): the one read
        ahead on its connection if there is one, else opened now."""
        host = next(h for h in self.stack.hosts if h.uri == uri)
        conn = self.connection(host.name)
        ahead = self._read_ahead(host.name)
        ledger = ahead.ledger(host.records_pool, host.records_path, self.stack.key) if ahead is not None else None
        return ledger or HostLedger(store_for(conn, host.records_pool, host.records_path), self.stack.key)

    def _read_ahead(self, host: str) -> ReadAhead | None:
        """What is being read ahead on the host's connection (virtplan.hosts.readahead), if
        anything; asked for once, after the connection is taken."""
        with self._lock:
            if host in self._ahead:
                return self._ahead[host]
        ahead = self._opening.ahead(host) if self._opening is not None else None
        with self._lock:
            return self._ahead.setdefault(host, ahead)

    # -- observe ------------------------------------------------------------------------
    def wanted(self, host: str, uri: str) -> dict[str, set[str]]:
        """Keys per kind worth reading on a host: declared ones and recorded ones."""
        wanted: dict[str, set[str]] = {"vm": set(), "network": set(), "pool": set(), "volume": set(), "snapshot": set()}
        wanted["bridge"] = set()  # host bridges the stack plugs into (checked at plan time)
        for r in self.stack.managed():
            if r.host is not None and r.host.name == host:
                wanted[r.kind].add(r.key)
                if isinstance(r, VM):
                    wanted["bridge"] |= {n.bridge for n in r.nics if n.bridge}
                elif isinstance(r, Network) and r.mode == "bridge" and r.bridge:
                    wanted["bridge"].add(r.bridge)
        for address, record in self.store.view(uri).items():
            _, kind, key = address.split("/", 2)
            wanted.setdefault(record.get("kind", kind), set()).add(key)
        return wanted

    def observe(self, keep_going: bool = False) -> Observation:
        """Read every host of the stack (in parallel) and build the renderer for them.

        With `keep_going`, a host that cannot be reached (or fails while being read) is
        left out and named in `Observation.unreachable` instead of failing the whole read."""
        hosts = self.stack.hosts
        keys: dict[str, bytes] = {}
        unreachable: dict[str, str] = {}

        def read(host_name: str) -> HostState | None:
            if not keep_going:
                return read_host(host_name)
            try:
                return read_host(host_name)
            except Exception as exc:  # one line per host; the others are still read
                unreachable[host_name] = _unreachable_line(self.stack.host(host_name), exc)
                return None

        def read_host(host_name: str) -> HostState:
            host = self.stack.host(host_name)
            key = self.host_records.secret_key(host.uri)
            if key is not None:
                keys[host_name] = key
            conn = self.connection(host_name)
            state = observe_host(
                conn,
                host_name,
                host.uri,
                self.wanted(host_name, host.uri),
                self.stack.name,
                cache=self.cache,
                hidden_pools=frozenset({host.records_pool}),
                secret_digest=functools.partial(keyed_digest, key or PROCESS_KEY),
                ahead=self._read_ahead(host_name),
            )
            observe_snapshots(self.connection(host_name), state, self.stack, self.store)
            return state

        if len(hosts) == 1:
            states = [read(hosts[0].name)]
        else:
            from concurrent.futures import ThreadPoolExecutor  # (not imported by a one-host command)

            with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
                states = list(pool.map(read, [h.name for h in hosts]))
        observed = {s.name: s for s in states if s is not None}
        problems = self._place(observed)
        self.resolve_images()
        renderer = self.renderer_for(observed, keys)
        _recognise_legacy_seeds(self.stack, observed, renderer)
        return Observation(observed, renderer, dict(sorted(unreachable.items())), problems)

    def _place(self, observed: dict[str, HostState]) -> list[FieldError]:
        """Place the stack's VMs again now that the hosts are known: a placed VM stays on
        the host where this stack's VM of its name is (`virtplan.model.placement`). The
        engine's stack becomes that concrete stack."""
        from virtplan.errors import ValidationError
        from virtplan.model.placement import concrete
        from virtplan.model.validate import validate

        declared = self.stack.as_written
        if declared is self.stack or not any(vm.placement is not None for vm in declared.vms):
            return []  # nothing placed: the stack is the same whatever the hosts hold
        stack, problems = concrete(declared, self._found(observed))
        if problems:
            return problems
        now = {vm.name: vm.host.name if vm.host else None for vm in self.stack.vms}
        if all(now.get(vm.name) == (vm.host.name if vm.host else None) for vm in stack.vms):
            self.stack = stack  # the same places: already validated, only the reasons differ
            return []
        try:
            validate(stack)  # VMs placed as they are now, checked as a whole (fixed IPs per network, ...)
        except ValidationError as exc:
            return exc.errors
        self.stack = stack
        return []

    def _found(self, observed: dict[str, HostState]) -> dict[str, str]:
        """VM name -> the host where this stack's VM of that name is (in host order)."""
        from virtplan.plan.ownership import mark_key

        found: dict[str, str] = {}
        for host in self.stack.hosts:
            state = observed.get(host.name)
            for obj in state.of_kind("vm") if state is not None else []:
                if obj.owner is not None and mark_key(obj.owner) == self.stack.key:
                    found.setdefault(obj.key, host.name)
        return found

    def resolve_images(self) -> None:
        """Give every volume with a URL source the facts of its image (virtual size, format,
        download size): from the host's record of the volume, the local cache, or the
        image's first bytes over HTTP. Validation never does this (it stays offline)."""
        from virtplan.model.images import is_url

        todo = [v for v in self.stack.volumes if is_url(v.source) and v.image is None and v.checksum]
        if not todo:
            return
        from virtplan.hosts.downloads import image_facts

        problems = []
        for vol in todo:
            assert vol.host is not None and vol.checksum is not None and vol.source is not None
            recorded = (self.store.get(vol.host.uri, vol.address) or {}).get("image")
            vol.image = image_facts(vol.source, *vol.checksum, recorded=recorded)
            if vol.image.format != vol.format:
                problems.append(FieldError(vol.address, "format", f"is {vol.format!r} but the image at {vol.source} "
                                           f"is {vol.image.format}; say format={vol.image.format!r}"))  # fmt: skip
        if problems:
            raise PlanError(problems)

    def fetch_images(self, plan: Plan, progress: Callable[[Volume, int, int | None], None] | None = None,
                     done: Callable[[Volume, Path, str], None] | None = None) -> None:  # fmt: skip
        """Download (or resume) the images of the volumes `plan` creates that are not in the
        local cache yet, verifying each; before anything is created, so a failed download
        changes nothing on the hosts."""
        from virtplan.model.images import is_url
        from virtplan.plan.changes import Action

        creating = {
            c.address for c in plan.changes if c.kind == "volume" and c.action in (Action.CREATE, Action.REPLACE)
        }
        todo = [v for v in self.stack.volumes if v.address in creating and is_url(v.source)]
        if not todo:
            return
        from virtplan.hosts.downloads import fetch

        for vol in todo:
            assert vol.image is not None, "resolve_images() runs with observe()"

            def report(n: int, total: int | None, vol: Volume = vol) -> None:
                if progress is not None:
                    progress(vol, n, total)

            path, how = fetch(vol.image, report)
            if done is not None:
                done(vol, path, how)

    def renderer_for(self, observed: dict[str, HostState], keys: dict[str, bytes] | None = None) -> Renderer:
        """The renderer for the observed hosts: the identities existing objects keep, and the
        keys of the stack's keyed digests (a host without one yet gets this process's key)."""
        identities: dict[str, Identity] = {}
        for host in observed.values():
            for obj in host.objects.values():
                if obj.kind in ("vm", "network") and obj.owner is not None and obj.owner.stack == self.stack.name:
                    macs = [n["mac"] for n in obj.spec.get("nics", [])]
                    identities[f"{host.name}/{obj.kind}/{obj.key}"] = Identity(obj.uuid, macs)
        for r in self.stack.managed():  # a renamed VM or network keeps its UUID and MACs
            if r.renamed_from and r.kind in ("vm", "network") and r.host is not None and r.address not in identities:
                old = f"{r.host.name}/{r.kind}/{r.renamed_from}"
                if old in identities:
                    identities[r.address] = identities[old]
        declared = functools.cache(self.stack.by_address)  # worked out for the first VM not found where declared
        for vm in self.stack.vms:  # a VM that moves keeps its UUID and MACs on its new host
            if vm.address in identities or vm.host is None or vm.host.name not in observed:
                continue
            for host in observed.values():
                moved = f"{host.name}/vm/{vm.name}"
                if moved in identities and moved not in declared():
                    identities[vm.address] = identities[moved]
                    break
        return Renderer(self.stack, {h.name: h.facts for h in observed.values()}, identities, keys)

    def ensure_keys(self, renderer: Renderer, hosts: Iterable[str]) -> None:
        """Make sure each of `hosts` has the stack's key of keyed digests (made by the first
        apply that needs one), and render with it from now on. Under the stack's lock."""
        for name in sorted(set(hosts)):
            if name in renderer.keys:
                continue
            key = self.host_records.secret_key(self.stack.host(name).uri, create=True)
            if key is not None:
                renderer.keys[name] = key

    # -- plan and apply -------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, timeout: float = 0.0, waiting: Callable[[str], None] | None = None) -> Iterator[list[str]]:
        """Hold the stack's lock on each of its hosts (waiting up to `timeout` s, telling
        `waiting` what it waits for); yields notes about stale locks released. Every command
        that changes the hosts (apply, destroy, clone, snapshot, adopt) runs inside it."""
        from virtplan.hosts.locks import HostLocks

        hosts = {h.name: (h.uri, self.connection(h.name)) for h in self.stack.hosts}
        with HostLocks(self.stack.key, hosts, timeout, waiting) as locks:
            self._drop_read_ahead()  # read before the lock: another apply may have changed things since
            self._locks = locks
            try:
                yield locks.notes() + self._migrate()
            finally:
                self._locks = None

    def _drop_read_ahead(self) -> None:
        """Read every host afresh from now on: stop the reads ahead, taken or not."""
        if self._opening is not None:
            self._opening.drop_reads()
        with self._lock:
            taken = [a for a in self._ahead.values() if a is not None]
            self._ahead = dict.fromkeys([*self._ahead, *(h.name for h in self.stack.hosts)])
        for ahead in taken:
            ahead.cancel()

    def _migrate(self) -> list[str]:
        """Move records of virtplan 0.1 from the local file to the hosts (under the lock)."""
        if self.legacy is None or not self.legacy.is_file():
            return []
        done = migrate(self.stack, self.legacy, self.host_records, self.connection)
        self.store, self.legacy = self.host_records, None
        note = f"moved {done.moved} record(s) of stack {self.stack.key!r} from this machine to its hosts"
        if done.restamped:
            note += f" and added its project to the marks of {len(done.restamped)} object(s)"
        return [note + "; local files are no longer needed"]

    def plan(
        self,
        destroy: bool = False,
        observation: Observation | None = None,
        *,
        scope: Stack | None = None,
        only: str | None = None,
        targets: list[str] | None = None,
        replace: list[str] | None = None,
    ) -> tuple[Plan, Observation]:
        """Observe (unless given) and plan; refuses (PlanError) what the guards refuse.

        `scope` plans a part of the stack (its resources, with this stack's renderer);
        `only` keeps the changes of one address; `targets` (`--target`) the changes of those
        addresses and what they wait for; `replace` (`--replace`) replaces those objects.
        The guards run on what is kept."""
        observation = observation or self.observe()
        if observation.placement_errors:
            raise PlanError(observation.placement_errors)
        namesakes = self._namesakes(observation)
        if namesakes:
            raise PlanError(namesakes)
        unable = self._host_problems(observation) if not destroy else []
        if unable:
            raise PlanError(unable)
        unknown = self._unknown_places(observation)
        plan = make_plan(scope or self.stack, observation.renderer, observation.hosts, self.store, destroy=destroy,
                         replace=replace, targets=targets, unknown_vms=unknown)  # fmt: skip
        if only is not None:
            plan.changes = [c for c in plan.changes if c.address == only]
        protected = check_plan(plan, observation.hosts, self.connection)  # base images others build on
        if protected:
            raise PlanError(protected)
        return plan, observation

    def _host_problems(self, observation: Observation) -> list[FieldError]:
        """What the stack declares that its hosts cannot do (UEFI firmware),
        found now rather than halfway through an apply."""
        from virtplan.hosts.judge import host_problems

        return [
            problem
            for name, state in observation.hosts.items()
            for problem in host_problems(self.connection(name), self.stack, name, state.facts)
        ]

    def _unknown_places(self, observation: Observation) -> set[str]:
        """Placed VMs one of whose hosts was not read: where they are cannot be known."""
        if not observation.unreachable:
            return set()
        return {
            vm.name for vm in self.stack.as_written.vms
            if vm.placement is not None and set(vm.placement.names) & set(observation.unreachable)
        }  # fmt: skip

    def _namesakes(self, observation: Observation) -> list[FieldError]:
        """Another stack with this stack's name on one of its hosts (another project, or
        none): two such stacks would be told apart only by their project, which a reader
        of plans and marks easily misses; refused, naming both."""
        from virtplan.plan.ownership import mark_key

        mine, short = self.stack.key, self.stack.name
        problems = []
        for host in observation.hosts.values():
            others = self.host_records.neighbours(host.uri)
            others |= {mark_key(o.owner) for o in host.objects.values() if o.owner is not None}
            for other in sorted(k for k in others if k != mine and k.rpartition("/")[2] == short):
                if "/" not in other and isinstance(self.store, Overlay):
                    continue  # virtplan 0.1's marks of this very stack, migrated on the next apply
                problems.append(FieldError(
                    host.name, "stack",
                    f"this stack is {mine!r} ({_origin(self.stack)}), but host {host.name!r} also has objects of "
                    f"stack {other!r}: a different stack with the same name. Give this one its own name with "
                    f"name_stack('...') (or a project), or remove the other stack first",
                ))  # fmt: skip
        return problems

    def not_owned(self, observation: Observation) -> list[str]:
        """Declared objects present on the hosts that this stack cannot prove it owns (imported
        and not adopted yet, or someone else's): `destroy` leaves them alone."""
        from virtplan.plan.ownership import owner_stack

        out = []
        for r in self.stack.managed():
            assert r.host is not None
            host = observation.hosts[r.host.name]
            obj = host.get(r.kind, r.key)
            if obj is not None and owner_stack(obj, r.address, host.uri, self.store, self.stack.key) != self.stack.key:
                out.append(r.address)
        return out

    def plan_saved(self, doc: dict[str, Any]) -> tuple[Plan, Observation]:
        """Plan again and refuse (StalePlan) unless the result is exactly the saved plan `doc`."""
        from virtplan.plan.planfile import check_current

        plan, observation = self.plan(
            destroy=bool(doc.get("destroy")), targets=doc.get("targets") or None, replace=doc.get("replace") or None
        )
        check_current(doc, plan, self.stack, observation.hosts, self.store)
        return plan, observation

    def apply(
        self,
        plan: Plan,
        observation: Observation,
        progress: ProgressFn | None = None,
        *,
        bookkeeping: bool = True,
        control: Control | None = None,
        limit: int | None = None,
    ) -> ApplyReport:
        """Apply `plan` (raises ApplyError with the report on failure), at most `limit`
        changes at once over all hosts (default: `virtplan.apply.executor.default_limit()`)
        and each host's `workers` on it. After a complete apply of the whole stack
        (`bookkeeping`), records what was applied: the baseline drift compares against, and
        forgets objects deleted outside virtplan that the stack no longer declares. An empty
        plan only does that bookkeeping. `control` lets the caller stop the apply
        (`Control.interrupt`, the CLI's Ctrl-C)."""
        from virtplan.apply.executor import ApplyReport, apply_plan  # not needed to plan: imported here

        report = ApplyReport()
        if plan.changes:
            self.fetch_images(plan)  # before anything is created (the CLI has done it, with progress bars)
            self.ensure_keys(observation.renderer, _hosts_with_secrets(self.stack, plan))
            names = {c.host for c in plan.changes} | {c.move["source"] for c in plan.changes if c.move}
            conns = {name: self.connection(name) for name in sorted(names)}
            for name in conns:
                if len(plan.for_host(name)) > 1:
                    self._own_records_connection(name)
            report = apply_plan(plan, self.stack, observation.renderer, observation.hosts, self.store, conns, progress,
                                control, limit)  # fmt: skip
        if self._locks is not None:
            self._locks.check()
        if bookkeeping and not plan.targets:  # a targeted apply leaves the rest as it is
            from virtplan.plan.drift import forget_vanished, record_baseline

            self.notes += self._release_sources(plan, observation)
            forget_vanished(self.stack, observation.hosts, self.store)
            record_baseline(self.stack, observation.hosts, self.store, observation.renderer)
            self.host_records.compact()
        return report

    def _release_sources(self, plan: Plan, observation: Observation) -> list[str]:
        """After volumes of this stack that backed onto another stack's frozen files are
        deleted (a clone destroyed): that stack lets go of what it froze for this one and
        merges back the layers nothing builds on any more, under its own lock (skipped,
        with a note, while another command holds it: its next clone or snapshot delete does
        it). See virtplan.apply.layers.compact_vm."""
        from virtplan.plan.changes import Action

        backings: dict[str, set[str]] = {}
        for c in plan.changes:
            obj = observation.hosts[c.host].get("volume", c.key) if c.kind == "volume" else None
            backing = (
                obj.spec.get("backing") if obj is not None and c.action in (Action.DELETE, Action.REPLACE) else None
            )
            if isinstance(backing, str) and backing.startswith("/"):
                backings.setdefault(c.host, set()).add(backing)
        notes = []
        for host_name, paths in backings.items():
            notes += self._release_on(host_name, paths)
        return notes

    def _release_on(self, host_name: str, paths: set[str]) -> list[str]:
        from virtplan.apply.layers import compact_host, release_freezes
        from virtplan.hosts.locks import HostLocks, LockBusy

        host = self.stack.host(host_name)
        conn = self.connection(host_name)
        store = store_for(conn, host.records_pool, host.records_path)
        notes = []
        for key in sorted(self.host_records.neighbours(host.uri)):
            ledger = HostLedger(store, key)
            holders = [a for a, r in ledger.records().items() if r.get("id") in paths]
            if not holders:
                continue
            theirs = HostRecords(key, lambda _uri, ledger=ledger: ledger)  # type: ignore[misc]
            try:
                with HostLocks(key, {host_name: (host.uri, conn)}, 0.0):
                    release_freezes(theirs, host.uri, self.stack.key)
                    notes += compact_host(conn, theirs, host.uri, holders[0].split("/", 1)[0]).notes
            except LockBusy:
                notes.append(f"stack {key!r} is busy; its layers are merged back by its next clone or snapshot delete")
        return notes

    def _own_records_connection(self, host: str) -> None:
        """Give the host's ledger a connection of its own for an apply. libvirtd serves only
        a few calls of one connection at a time (`max_client_requests`, 5 by default), and
        apply's workers keep them busy with slow calls (starting or stopping a guest takes
        seconds); each records write (about ten short calls) queued behind those for
        seconds, and every worker waits for its records."""
        if host in self._records_conns:
            return
        uri = self.stack.host(host).uri

        def open_one() -> Any:
            self._records_conns[host] = connect(uri, host)
            return self._records_conns[host]

        self.host_records.reconnect(uri, open_one)

    def tidy(self) -> None:
        """Compact the stack's ledgers if many writes piled up (or delete one left empty),
        when the stack's lock is free (Pulumi's provider calls write without holding it);
        never waits for the lock."""
        from virtplan.hosts.locks import LockBusy

        if not self.host_records.untidy():
            return
        with contextlib.suppress(LockBusy), self.locked(0.0):
            self.host_records.compact()

    def drift(self, observation: Observation, pending: bool = False) -> DriftReport:
        """What changed on the hosts outside virtplan since it last applied the stack."""
        from virtplan.plan.drift import detect

        return detect(self.stack, observation.hosts, self.store, observation.renderer, pending=pending)

    def guest_report(self, host: str, vm_name: str, refresh: bool = True) -> dict[str, str] | None:
        """The last report a probe-style guest printed on its console (see virtplan_lab.probe):
        what the guest itself says its address, hostname and instance-id are."""
        from virtplan.hosts.console import read_console_log
        from virtplan.hosts.guestlog import parse_guest_line

        declared = [v for v in self.stack.vms if v.name == vm_name and v.host is not None and v.host.name == host]
        if not declared or declared[0].seed_pool is None or not (declared[0].serial and declared[0].console_log):
            return None
        return parse_guest_line(read_console_log(self.connection(host), declared[0], refresh=refresh))

    def _refresh_log_pools(self, host: str) -> None:
        """Refresh, once, every pool holding a console log of this host's VMs."""
        import libvirt

        from virtplan.hosts.pools import refresh_pool

        names = {v.seed_pool.name for v in self.stack.vms if v.host is not None and v.host.name == host and v.seed_pool}
        for name in sorted(names):
            try:
                refresh_pool(self.connection(host).storagePoolLookupByName(name))
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_OPERATION_INVALID):
                    raise

    # -- show ---------------------------------------------------------------------------
    def inventory(self, observation: Observation | None = None) -> list[dict[str, Any]]:
        """Every owned object per host with its state, and for VMs their MACs and IPs."""
        from virtplan.plan.ownership import owned_objects

        observation = observation or self.observe()
        rows = []
        for host in observation.hosts.values():
            owned = owned_objects(host, self.store, self.stack.key)
            if any(o.kind == "vm" and o.spec.get("state") == "running" for o in owned):
                self._refresh_log_pools(host.name)
            networks = {
                n for o in owned if o.kind == "vm" for n in (x.get("network") for x in o.spec.get("nics", [])) if n
            }
            leases = dhcp_leases(self.connection(host.name), networks) if networks else {}
            order = {"network": 0, "pool": 1, "volume": 2, "vm": 3, "snapshot": 4}
            for o in sorted(owned, key=lambda o: (order[o.kind], o.key)):
                row: dict[str, Any] = {"host": host.name, "kind": o.kind, "name": o.key}
                if o.kind == "vm":
                    row["state"] = o.spec.get("state")
                    row["nics"] = [
                        {"mac": n["mac"], "network": n.get("network") or n.get("bridge"), "ip": leases.get(n["mac"]),
                         "reserved": reserved(host, n.get("network"), n["mac"])}
                        for n in o.spec.get("nics", [])
                    ]  # fmt: skip
                    row["memory"] = o.spec.get("memory")
                    row["vcpus"] = o.spec.get("vcpus")
                    running = o.spec.get("state") == "running"
                    row["guest"] = self.guest_report(host.name, o.key, refresh=False) if running else None
                elif o.kind in ("network", "pool"):
                    row["state"] = "active" if o.spec.get("active") else "inactive"
                    row["detail"] = o.spec.get("cidr") or o.spec.get("path") or o.spec.get("bridge")
                else:
                    row["state"] = "present"
                    row["detail"] = o.spec.get("capacity")
                rows.append(row)
        return rows


def reserved(host: HostState, network: str | None, mac: str) -> str | None:
    """The IP the network's DHCP server reserves for `mac` (a NIC's fixed `ip=`), if any."""
    obj = host.get("network", network) if network else None
    for r in (obj.spec.get("reservations") or []) if obj is not None else []:
        if r.get("mac") == mac.lower():
            return str(r["ip"]) if r.get("ip") else None
    return None


def load_saved_plan(path: Path) -> tuple[dict[str, Any], Engine]:
    """A saved plan and the engine of the stack it was made for; refuses (StalePlan) a plan
    whose stack file changed or names another stack."""
    from virtplan.model import load_stack
    from virtplan.plan import planfile

    doc = planfile.read_plan(path)
    stack_file = planfile.stack_file_of(doc, path)
    planfile.check_stack_file(doc, stack_file)
    engine = Engine(load_stack(stack_file, dict(doc["hosts"])))
    if engine.stack.name != doc["stack"]:
        engine.close()
        raise planfile.StalePlan([f"it is for stack {doc['stack']!r}, but {stack_file} is stack {engine.stack.name!r}"])
    return doc, engine


def require_allowed(plan: Plan, allow_destroy: bool, fix: str) -> None:
    """Refuse (ConfirmationRequired, naming each one) a plan with destructive changes
    unless they were allowed explicitly; `fix` says how to allow them."""
    risky = plan.destructive()
    if risky and not allow_destroy:
        names = "\n".join(f"  - {c.action.value} {c.address}: {c.destructive}" for c in risky)
        raise ConfirmationRequired(f"the plan has destructive changes; nothing was applied:\n{names}\n{fix}")


def _hosts_with_secrets(stack: Stack, plan: Plan) -> set[str]:
    """Hosts where the plan creates or changes a VM whose definition holds a digest of a secret."""
    declared = stack.by_address()
    hosts = set()
    for change in plan.changes:
        vm = declared.get(change.address)
        if isinstance(vm, VM) and (
            (vm.cloud_init is not None and vm.cloud_init.has_secret)
            or (vm.graphics is not None and vm.graphics.password is not None)
        ):
            hosts.add(change.host)
    return hosts


def _recognise_legacy_seeds(stack: Stack, observed: dict[str, HostState], renderer: Renderer) -> None:
    """A seed virtplan 0.1 wrote carries its unkeyed digest in the domain's metadata: when it
    is the digest of the seed the stack declares now, it is that seed (no restart for the
    change of digest); the next redefinition writes the keyed one."""
    for vm in stack.vms:
        host = observed.get(vm.host.name) if vm.host is not None else None
        obj = host.get("vm", vm.name) if host is not None else None
        if obj is not None and obj.spec.get("cloud_init"):
            obj.spec["cloud_init"] = renderer.upgraded_seed_digest(vm, obj.spec["cloud_init"])


def _unreachable_line(host: Any, exc: BaseException) -> str:
    """One line naming the host, its URI and what went wrong."""
    from virtplan.errors import ConnectionFailed

    if isinstance(exc, ConnectionFailed):
        return str(exc)  # already "cannot connect to host 'h' at URI: cause: detail"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"cannot read host {host.name!r} at {host.uri}: {text}"


def _origin(stack: Stack) -> str:
    where = f"from {stack.path}" if stack.path is not None else "built in code"
    return f"project {stack.project!r}, {where}" if stack.project else f"no project, {where}"
