"""Bring existing libvirt objects under management: `virtplan import` and `virtplan adopt`.

`import_host` reads a host's domains, networks, pools and volumes (all, or those matching
`--name-pattern` plus what they refer to) and writes a readable stack program declaring
them. What it declares is checked before it is written: every object's desired spec,
computed exactly as `virtplan plan` computes it, must equal what the host has, so planning
the program is a no-op. Objects that cannot round-trip (a CD-ROM, an inactive network, a
disk outside any pool, ...) are left out, each named in the program's header with the
reason, together with everything that depends on them.

The imported objects are not owned yet: the stack's records on the host hold an import
*claim* for each, which lets the planner accept them while they match (anything else is
an error, and virtplan never changes them). `adopt` then takes ownership explicitly:
virtplan's mark in the domain and network metadata, its record for pools and volumes.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.errors import VirtplanError
from virtplan.hosts.pools import refresh_pool
from virtplan.units import exact_size
from virtplan.workflows.codegen import identifier, literal

if TYPE_CHECKING:
    from virtplan.documents.render import Renderer
    from virtplan.hosts.observe import HostState, ObservedObject
    from virtplan.model import Resource, Stack

Say = Callable[[str], None]


class ImportFailed(VirtplanError):
    """The host cannot be imported as asked."""


@dataclass
class ImportResult:
    stack_file: Path
    declared: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    skipped: dict[str, str] = field(default_factory=dict)  # "kind name" -> reason

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.declared.values())


# -- reading the host -------------------------------------------------------------------------
def read_host(conn: Any, host_name: str, uri: str, stack_name: str) -> HostState:
    """Everything on the host, parsed like `observe` does (pools refreshed first)."""
    import libvirt

    from virtplan.hosts.ledger import DEFAULT_POOL
    from virtplan.hosts.observe import observe_host

    hidden = frozenset({DEFAULT_POOL})  # virtplan's own records
    pools = [
        p for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT) if p.name() not in hidden
    ]
    for pool in pools:
        if pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                refresh_pool(pool)  # files put there without libvirt
    wanted = {
        "vm": {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)},
        "pool": {p.name() for p in pools},
        "network": set(),
        "volume": set(),
    }
    return observe_host(conn, host_name, uri, wanted, stack_name, hidden_pools=hidden)


# -- choosing and declaring -------------------------------------------------------------------
@dataclass
class _Choice:
    vms: list[ObservedObject]
    networks: list[ObservedObject]
    pools: list[ObservedObject]
    volumes: list[ObservedObject]


def _matches(name: str, patterns: list[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def choose(state: HostState, patterns: list[str], skipped: dict[str, str]) -> _Choice:
    """The objects to import: those matching, plus what they refer to."""
    path_to_volume = {o.uuid: o for o in state.of_kind("volume") if o.uuid}
    vms = []
    for o in sorted(state.of_kind("vm"), key=lambda o: o.key):
        if not _matches(o.key, patterns):
            continue
        if o.owner is not None:
            skipped[f"vm {o.key}"] = f"already managed by virtplan stack {o.owner.stack!r}"
            continue
        vms.append(o)
    nets = {o.key for o in state.of_kind("network") if patterns and _matches(o.key, patterns)}
    vols = {o.key for o in state.of_kind("volume") if patterns and _matches(o.key.split("/", 1)[1], patterns)}
    pools = {o.key for o in state.of_kind("pool") if patterns and _matches(o.key, patterns)}
    if not patterns:
        nets = {o.key for o in state.of_kind("network")}
        vols = {o.key for o in state.of_kind("volume")}
        pools = {o.key for o in state.of_kind("pool")}
    for vm in vms:
        nets |= {n["network"] for n in vm.spec.get("nics", []) if n.get("network")}
        vols |= {d["volume"] for d in vm.spec.get("disks", []) if d.get("volume") and "/" in d["volume"][1:]}
        for boot in ("kernel", "initrd"):
            path = vm.spec.get(boot)
            if path in path_to_volume:
                vols.add(path_to_volume[path].key)
    todo = list(vols)
    while todo:  # backing chains
        obj = state.get("volume", todo.pop())
        backing = obj.spec.get("backing") if obj is not None else None
        if backing in path_to_volume and path_to_volume[backing].key not in vols:
            vols.add(path_to_volume[backing].key)
            todo.append(path_to_volume[backing].key)
    pools |= {v.split("/", 1)[0] for v in vols}
    networks = []
    for key in sorted(nets):
        obj = state.get("network", key)
        if obj is None:
            continue
        if obj.owner is not None:
            skipped[f"network {key}"] = f"already managed by virtplan stack {obj.owner.stack!r}"
            continue
        networks.append(obj)
    found_pools = [state.get("pool", k) for k in sorted(pools)]
    found_vols = [state.get("volume", k) for k in sorted(vols)]
    return _Choice(vms, networks, [p for p in found_pools if p is not None], [v for v in found_vols if v is not None])


@dataclass
class _Decl:
    """One declaration: its program text and the model object built from the same values."""

    kind: str
    key: str
    var: str  # "" for VMs (no variable)
    code: str
    resource: Resource | None = None
    refs: set[tuple[str, str]] = field(default_factory=set)  # (kind, key) it needs


class _Builder:
    """Builds the model objects and their program text side by side."""

    def __init__(self, state: HostState, host_name: str, uri: str, domain_type: str | None):
        self.state, self.host_name, self.uri, self.domain_type = state, host_name, uri, domain_type
        self.taken: set[str] = {"host"}
        self.decls: dict[tuple[str, str], _Decl] = {}
        self.objects: dict[tuple[str, str], Any] = {}
        self.reasons: dict[tuple[str, str], str] = {}

    def host_code(self) -> str:
        args = [literal(self.host_name), f"uri={literal(self.uri)}"]
        if self.domain_type:
            args.append(f"domain_type={literal(self.domain_type)}")
        return f"host = Host({', '.join(args)})"

    def refuse(self, kind: str, key: str, reason: str) -> None:
        self.reasons[(kind, key)] = reason

    def pool(self, o: ObservedObject, host: Any) -> None:
        from virtplan.model import Pool

        s = o.spec
        if s.get("type") != "dir":
            return self.refuse("pool", o.key, f"type {s.get('type')!r} (only dir pools are supported)")
        if not s.get("active"):
            return self.refuse("pool", o.key, "inactive (declaring it would start it)")
        var = identifier(o.key, self.taken, "_pool")
        args = [literal(o.key), f"path={literal(s['path'])}"]
        if not s.get("autostart"):
            args.append("autostart=False")
        pool = Pool(o.key, path=s["path"], autostart=bool(s.get("autostart")), host=host)
        self._add("pool", o.key, var, f"{var} = Pool({', '.join(args)})", pool)

    def network(self, o: ObservedObject, host: Any) -> None:
        from virtplan.model import Network

        s = o.spec
        mode = s.get("mode")
        if mode not in ("nat", "route", "isolated", "bridge"):
            return self.refuse("network", o.key, f"forward mode {mode!r} is not supported")
        if not s.get("active"):
            return self.refuse("network", o.key, "inactive (declaring it would start it)")
        kw: dict[str, Any] = {"mode": mode, "autostart": bool(s.get("autostart")), "bridge": s.get("bridge")}
        if s.get("cidr"):
            kw["cidr"] = s["cidr"]
            kw["gateway"] = s.get("gateway")
            kw["dhcp"] = bool(s.get("dhcp"))
            if s.get("dhcp_range"):
                kw["dhcp_range"] = tuple(s["dhcp_range"].split("-", 1))
        if s.get("domain"):
            kw["domain"] = s["domain"]
        var = identifier(o.key, self.taken, "" if o.key.endswith("net") else "_net")
        args = [literal(o.key)] + [
            f"{k}={literal(v)}" for k, v in kw.items() if not (k == "autostart" and v) and v is not None
        ]
        args = [a for a in args if a != "dhcp=True"]
        net = Network(o.key, host=host, **kw)
        self._add("network", o.key, var, f"{var} = Network({', '.join(args)})", net)

    def volume(self, o: ObservedObject) -> None:
        from virtplan.model import Volume

        s = o.spec
        pool_key, _, name = o.key.partition("/")
        pool = self.objects.get(("pool", pool_key))
        if pool is None:
            return self.refuse("volume", o.key, f"its pool {pool_key!r} is not imported")
        if s.get("format") not in ("qcow2", "raw"):
            return self.refuse("volume", o.key, f"format {s.get('format')!r} (qcow2 and raw are supported)")
        capacity = int(s.get("capacity") or 0)
        if capacity <= 0 or (s.get("format") == "qcow2" and capacity % 512):
            return self.refuse("volume", o.key, f"capacity {capacity} is not a whole number of sectors")
        refs = {("pool", pool_key)}
        args = [literal(name), f"pool={self.decls[('pool', pool_key)].var}", f"size={literal(exact_size(capacity))}"]
        kw: dict[str, Any] = {"size": capacity, "format": s["format"]}
        if s["format"] != "qcow2":
            args.append(f"format={literal(s['format'])}")
        backing = s.get("backing")
        if backing:
            inner = next((v for v in self.state.of_kind("volume") if v.uuid == backing), None)
            if inner is not None and ("volume", inner.key) in self.objects:
                kw["backing"] = self.objects[("volume", inner.key)]
                args.append(f"backing={self.decls[('volume', inner.key)].var}")
                refs.add(("volume", inner.key))
            else:
                fmt = inner.spec.get("format") if inner is not None else "qcow2"
                kw["backing"], kw["backing_format"] = backing, fmt
                args.append(f"backing={literal(backing)}")
                if fmt != "qcow2":
                    args.append(f"backing_format={literal(fmt)}")
        var = identifier(name, self.taken)
        vol = Volume(name, pool=pool, **kw)
        self._add("volume", o.key, var, f"{var} = Volume({', '.join(args)})", vol, refs)

    def vm(self, o: ObservedObject, host: Any) -> None:
        from virtplan.documents.render import target_names
        from virtplan.model import NIC, VM, Disk, Graphics
        from virtplan.model.resources import DISK_BUSES, NIC_MODELS

        s = o.spec
        refuse = lambda why: self.refuse("vm", o.key, why)  # noqa: E731
        if self.domain_type and s.get("type") != self.domain_type:
            return refuse(f"domain type {s.get('type')!r}, but the host is imported as {self.domain_type!r}")
        refs: set[tuple[str, str]] = set()
        disks, disk_code = [], []
        buses = [d.get("bus") for d in s.get("disks", [])]
        if any(b not in DISK_BUSES for b in buses):
            return refuse(f"a disk on bus {next(b for b in buses if b not in DISK_BUSES)!r}")
        targets = self._targets(o)
        auto = target_names([str(b) for b in buses])
        for i, d in enumerate(s.get("disks", [])):
            if d.get("device") != "disk":
                return refuse(f"disks[{i}] is a {d.get('device')} (virtplan models disks only)")
            key = d.get("volume") or ""
            if ("volume", key) not in self.objects:
                why = self.reasons.get(("volume", key), "not in any storage pool")
                return refuse(f"disks[{i}] {key}: {why}")
            refs.add(("volume", key))
            kw: dict[str, Any] = {"bus": d["bus"]}
            code = [self.decls[("volume", key)].var]
            if d["bus"] != "virtio":
                code.append(f"bus={literal(d['bus'])}")
            if d.get("boot"):
                kw["boot"] = d["boot"]
                code.append(f"boot={d['boot']}")
            if i < len(targets) and targets[i] and targets[i] != auto[i]:
                kw["target"] = targets[i]
                code.append(f"target={literal(targets[i])}")
            disks.append(Disk(self.objects[("volume", key)], **kw))
            disk_code.append(f"Disk({', '.join(code)})" if len(code) > 1 else code[0])
        nics, nic_code = [], []
        for i, n in enumerate(s.get("nics", [])):
            if n.get("model") not in NIC_MODELS:
                return refuse(f"nics[{i}] has model {n.get('model')!r} (virtplan models {', '.join(NIC_MODELS)})")
            kw = {"model": n["model"], "mac": n["mac"]}
            if n.get("network"):
                if ("network", n["network"]) not in self.objects:
                    why = self.reasons.get(("network", n["network"]), "not imported")
                    return refuse(f"nics[{i}] network {n['network']}: {why}")
                refs.add(("network", n["network"]))
                kw["network"] = self.objects[("network", n["network"])]
                code = [self.decls[("network", n["network"])].var]
                ip = self._reserved_ip(n["network"], n["mac"], o.key)
                if ip:
                    kw["ip"] = ip
            else:
                kw["bridge"] = n.get("bridge")
                code = [f"bridge={literal(n.get('bridge'))}"]
                ip = None
            if n["model"] != "virtio":
                code.append(f"model={literal(n['model'])}")
            code.append(f"mac={literal(n['mac'])}")
            if ip:
                code.append(f"ip={literal(ip)}")
            nics.append(NIC(**kw))
            nic_code.append(f"NIC({', '.join(code)})")
        kw = {
            "vcpus": s["vcpus"], "max_vcpus": s["max_vcpus"], "memory": s["memory"], "max_memory": s["max_memory"],
            "machine": s.get("machine"), "arch": s.get("arch"), "firmware": s.get("firmware", "bios"),
            "serial": bool(s.get("serial")), "autostart": bool(s.get("autostart")), "state": s.get("state"),
            "description": s.get("description") or "",
        }  # fmt: skip
        code = [literal(o.key), "host=host"]
        code.append(f"vcpus={s['vcpus']}")
        if s["max_vcpus"] != s["vcpus"]:
            code.append(f"max_vcpus={s['max_vcpus']}")
        code.append(f"memory={literal(exact_size(s['memory']))}")
        if s["max_memory"] != s["memory"]:
            code.append(f"max_memory={literal(exact_size(s['max_memory']))}")
        for name in ("machine", "arch"):
            if s.get(name):
                code.append(f"{name}={literal(s[name])}")
        if kw["firmware"] != "bios":
            code.append(f"firmware={literal(kw['firmware'])}")
        if disk_code:
            code.append(f"disks=[{', '.join(disk_code)}]")
        if nic_code:
            code.append(f"nics=[{', '.join(nic_code)}]")
        gfx = s.get("graphics")
        if gfx:
            if not gfx.get("listen"):
                return refuse("its console has no listen address")
            kw["graphics"] = Graphics(gfx["type"], listen=gfx["listen"])
            code.append(f"graphics=Graphics({literal(gfx['type'])}, listen={literal(gfx['listen'])})")
        if not kw["serial"]:
            code.append("serial=False")
        if kw["autostart"]:
            code.append("autostart=True")
        if kw["state"] != "running":
            code.append(f"state={literal(kw['state'])}")
        if kw["description"]:
            code.append(f"description={literal(kw['description'])}")
        for boot in ("kernel", "initrd"):
            path = s.get(boot)
            if not path:
                continue
            found = next((v for v in self.state.of_kind("volume") if v.uuid == path), None)
            if found is None or ("volume", found.key) not in self.objects:
                return refuse(f"its {boot} {path} is not an imported pool volume")
            kw[boot] = self.objects[("volume", found.key)]
            refs.add(("volume", found.key))
            code.append(f"{boot}={self.decls[('volume', found.key)].var}")
        if s.get("cmdline"):
            kw["cmdline"] = s["cmdline"]
            code.append(f"cmdline={literal(s['cmdline'])}")
        if s.get("console_log") is None:
            kw["console_log"] = False
            if kw["serial"]:
                code.append("console_log=False")
        vm = VM(o.key, host=host, disks=list[Any](disks), nics=list[Any](nics), **kw)
        body = ",\n    ".join(code)
        extra = _unmodeled(o.xml)
        note = f"# not modeled, dropped when virtplan first redefines it: {', '.join(extra)}\n" if extra else ""
        self._add("vm", o.key, "", f"{note}VM(\n    {body},\n)", vm, refs)

    def _targets(self, o: ObservedObject) -> list[str]:
        import xml.etree.ElementTree as ET

        out = []
        for disk in ET.fromstring(o.xml).iterfind("devices/disk"):
            target = disk.find("target")
            out.append(target.get("dev", "") if target is not None else "")
        return out

    def _reserved_ip(self, network: str, mac: str, vm: str) -> str | None:
        net = self.state.get("network", network)
        for r in (net.spec.get("reservations") or []) if net is not None else []:
            if r.get("mac") == mac:
                return str(r.get("ip"))
        return None

    def _add(self, kind: str, key: str, var: str, code: str, resource: Any,
             refs: set[tuple[str, str]] | None = None) -> None:  # fmt: skip
        self.decls[(kind, key)] = _Decl(kind, key, var, code, resource, refs or set())
        self.objects[(kind, key)] = resource


#: Devices virtplan renders itself or that libvirt adds on its own.
_MODELED = {"disk", "interface", "serial", "console", "graphics", "video", "memballoon", "controller", "input",
            "emulator", "audio"}  # fmt: skip


def _unmodeled(domain_xml: str) -> list[str]:
    """Device kinds of a domain that virtplan's templates do not produce (a note for the reader)."""
    import xml.etree.ElementTree as ET

    devices = ET.fromstring(domain_xml).find("devices")
    found = {d.tag for d in devices} - _MODELED if devices is not None else set()
    return sorted(found)


def _declare(state: HostState, choice: _Choice, host_name: str, uri: str, excluded: dict[tuple[str, str], str],
             stack_name: str) -> tuple[_Builder, Stack]:  # fmt: skip
    from virtplan.model import Host, Stack, collecting

    types = Counter(o.spec.get("type") for o in choice.vms if ("vm", o.key) not in excluded)
    domain_type = types.most_common(1)[0][0] if types else None
    b = _Builder(state, host_name, uri, domain_type)
    b.reasons.update(excluded)
    stack = Stack(stack_name)
    with collecting(stack):
        host = Host(host_name, uri=uri, domain_type=domain_type)
        for o in choice.pools:
            if ("pool", o.key) not in excluded:
                b.pool(o, host)
        for o in choice.networks:
            if ("network", o.key) not in excluded:
                b.network(o, host)
        for o in _backing_first(choice.volumes):
            if ("volume", o.key) not in excluded:
                b.volume(o)
        for o in choice.vms:
            if ("vm", o.key) not in excluded:
                b.vm(o, host)
    return b, stack


def _backing_first(volumes: list[ObservedObject]) -> list[ObservedObject]:
    by_path = {v.uuid: v for v in volumes}
    out: list[ObservedObject] = []
    seen: set[str] = set()

    def visit(v: ObservedObject) -> None:
        if v.key in seen:
            return
        seen.add(v.key)
        backing = by_path.get(v.spec.get("backing"))
        if backing is not None:
            visit(backing)
        out.append(v)

    for v in volumes:
        visit(v)
    return out


def _round_trip(stack: Stack, state: HostState) -> dict[tuple[str, str], str]:
    """Declarations whose desired spec differs from the host: (kind, key) -> why."""
    from virtplan.documents.render import Renderer
    from virtplan.model import validate
    from virtplan.plan.planner import desired_spec

    problems: dict[tuple[str, str], str] = {}
    try:
        validate(stack)
    except VirtplanError as exc:
        for err in getattr(exc, "errors", []):
            for r in stack.managed():
                if r.address == err.address:
                    problems[(r.kind, r.key)] = f"{err.field}: {err.message}"
        if not problems:
            raise
        return problems
    renderer: Renderer = Renderer(stack, {state.name: state.facts})
    for r in stack.managed():
        obj = state.get(r.kind, r.key)
        if obj is None:
            continue
        try:
            desired = desired_spec(r, renderer)
        except ValueError as exc:
            problems[(r.kind, r.key)] = str(exc)
            continue
        differ = sorted(k for k, v in desired.items() if obj.spec.get(k) != v)
        if differ:
            shown = "; ".join(f"{k}: host has {obj.spec.get(k)!r}, would declare {desired[k]!r}" for k in differ[:3])
            problems[(r.kind, r.key)] = f"does not round-trip ({shown})"
    return problems


def _dependents(decls: dict[tuple[str, str], _Decl], gone: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    out = set(gone)
    changed = True
    while changed:
        changed = False
        for key, d in decls.items():
            if key not in out and d.refs & out:
                out.add(key)
                changed = True
    return out


def import_host(
    uri: str,
    out: Path,
    patterns: list[str] | None = None,
    host_name: str = "imported",
    say: Say | None = None,
) -> ImportResult:
    """Write a stack program at `out` declaring the host's objects, and record import claims."""
    from virtplan.hosts.connection import connect

    say = say or (lambda _m: None)
    patterns = list(patterns or [])
    if out.exists():
        raise ImportFailed(f"{out} already exists; pick another --out (import never overwrites a program)")
    stack_name = out.stem
    conn = connect(uri, host_name)
    try:
        state = read_host(conn, host_name, uri, stack_name)
    finally:
        conn.close()
    skipped: dict[str, str] = {}
    choice = choose(state, patterns, skipped)
    excluded: dict[tuple[str, str], str] = {}
    for _ in range(20):  # until every declaration round-trips
        builder, stack = _declare(state, choice, host_name, uri, excluded, stack_name)
        failed = dict(builder.reasons)
        failed.update({k: v for k, v in _round_trip(stack, state).items() if k not in failed})
        failed = {k: v for k, v in failed.items() if k not in excluded}
        if not failed:
            break
        excluded.update(failed)
        for dep in _dependents(builder.decls, failed) - set(failed):
            needs = sorted(f"{k} {n}" for k, n in builder.decls[dep].refs if (k, n) in excluded)
            excluded[dep] = f"needs {', '.join(needs) or 'an object left out'}, which is left out"
    else:  # pragma: no cover - each round excludes at least one object
        raise ImportFailed("the import did not settle; report this with the host's objects")
    for (kind, key), why in sorted(excluded.items()):
        skipped[f"{kind} {key}"] = why
    text = _program(builder, uri, patterns, skipped, stack_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    result = ImportResult(out)
    claims: dict[str, dict[str, Any]] = {}
    for (kind, key), decl in builder.decls.items():
        obj = state.get(kind, key)
        if obj is None or decl.resource is None:
            continue
        claims[decl.resource.address] = {"kind": kind, "claim": obj.uuid}
        result.declared.setdefault(kind, []).append(key)
    _record_claims(out, host_name, uri, claims)
    result.skipped = skipped
    say(f"wrote {out}: {result.count} object(s) declared, {len(skipped)} left out")
    return result


def _record_claims(program: Path, host_name: str, uri: str, claims: dict[str, dict[str, Any]]) -> None:
    """Record on the host which objects the new program declares (not owned yet: `plan`
    accepts them while they match; `adopt` takes them)."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack

    with Engine(load_stack(program, {host_name: uri})) as engine, engine.locked():
        engine.store.put_many(uri, claims)


def _program(b: _Builder, uri: str, patterns: list[str], skipped: dict[str, str], stack_name: str) -> str:
    made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    which = f"objects matching {', '.join(patterns)} (and what they use)" if patterns else "every object"
    header = [
        f"Stack {stack_name!r}: {which} on {uri}, imported by `virtplan import` at {made}.",
        "",
        "Planning this program changes nothing: each declaration matches the host exactly.",
        "The objects are not virtplan's yet; `virtplan adopt` on this file takes ownership, after",
        "which plan/apply manage them like any stack's. Beware: after adoption a change",
        "re-renders a domain from virtplan's templates, dropping devices it does not model.",
    ]
    if skipped:
        header += ["", "Left out (they would not round-trip, or depend on something that does not):"]
        header += [f"- {what}: {why}" for what, why in sorted(skipped.items())]
    names = {"Host"}
    kinds = {d.kind for d in b.decls.values()}
    names |= {{"pool": "Pool", "network": "Network", "volume": "Volume", "vm": "VM"}[k] for k in kinds}
    code = "\n".join(d.code for d in b.decls.values())
    names |= {n for n in ("Disk", "NIC", "Graphics") if f"{n}(" in code}
    lines = ['"""' + "\n".join(header).replace('"""', "'''") + '\n"""', ""]
    lines.append(f"from virtplan import {', '.join(sorted(names, key=lambda s: (not s.isupper(), s)))}")
    lines += ["", b.host_code(), ""]
    for kind in ("pool", "network", "volume", "vm"):
        group = [d.code for d in b.decls.values() if d.kind == kind]
        if group:
            lines += [*group, ""]
    return "\n".join(lines).rstrip() + "\n"


# -- adopting ---------------------------------------------------------------------------------
@dataclass
class AdoptResult:
    adopted: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def adopt(stack_file: Path, host_uris: dict[str, str] | None = None, say: Say | None = None) -> AdoptResult:
    """Take ownership of every declared object that exists, is no stack's and matches its
    declaration exactly. Checks everything first; changes nothing if anything is wrong."""
    from virtplan.engine import Engine
    from virtplan.errors import FieldError
    from virtplan.model import load_stack
    from virtplan.plan.ownership import owner_stack
    from virtplan.plan.planner import PlanError, desired_spec, ordered

    say = say or (lambda _m: None)
    stack = load_stack(stack_file, host_uris)
    result = AdoptResult()
    with Engine(stack) as engine, engine.locked():
        observation = engine.observe()
        errors: list[FieldError] = []
        todo: list[tuple[Resource, ObservedObject]] = []
        for r in ordered([x for x in stack.managed() if x.kind != "snapshot"]):
            assert r.host is not None
            host = observation.hosts[r.host.name]
            obj = host.get(r.kind, r.key)
            if obj is None:
                result.missing.append(r.address)
                continue
            owner = owner_stack(obj, r.address, host.uri, engine.store, stack.key)
            if owner == stack.key:
                result.already.append(r.address)
                continue
            if owner is not None:
                errors.append(FieldError(r.address, "name", f"belongs to stack {owner!r}; it cannot be adopted"))
                continue
            desired = desired_spec(r, observation.renderer)
            differ = sorted(k for k, v in desired.items() if obj.spec.get(k) != v)
            if differ:
                why = f"differs from the host in {', '.join(differ)}; make the declaration match it first"
                errors.append(FieldError(r.address, differ[0], why))
                continue
            todo.append((r, obj))
        if errors:
            raise PlanError(errors)
        for r, obj in todo:
            assert r.host is not None
            _take(engine.connection(r.host.name), engine.store, observation.hosts[r.host.name], r, obj, stack)
            result.adopted.append(r.address)
            say(f"adopted {r.address}")
    return result


def _take(conn: Any, store: Any, host: HostState, r: Resource, obj: ObservedObject, stack: Stack) -> None:
    import libvirt

    from virtplan.documents.marks import owner_attrs, owner_element, stamped
    from virtplan.documents.render import NAMESPACE

    if r.kind == "vm":
        dom = conn.lookupByName(r.key)
        timeout = str(getattr(r, "shutdown_timeout", 60.0))
        mark = owner_element(owner_attrs(stack.name, stack.project, r.address, **{"shutdown-timeout": timeout}))
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "virtplan", NAMESPACE, flags)
        store.forget(host.uri, r.address)
    elif r.kind == "network":
        net = conn.networkLookupByName(r.key)
        xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        conn.networkDefineXML(stamped(xml, owner_attrs(stack.name, stack.project, r.address)))
        store.forget(host.uri, r.address)
    else:
        from virtplan.plan.ownership import identity_of

        expect = identity_of(obj.spec) if r.kind == "volume" else None
        store.put(host.uri, r.address, kind=r.kind, id=obj.uuid, pending=False, claim=None, expect=expect)
