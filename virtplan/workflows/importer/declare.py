"""Declaring what a host has: model objects built from the observed specs.

`declare` builds one model object per chosen host object, with the values the host has,
inside a stack of its own (the program text is written from these very objects by
`virtplan.workflows.importer.program`). What virtplan cannot model is refused with a
reason instead (a pool that is not a directory, a CD-ROM, a disk outside any pool, ...),
and so is everything that refers to a refused object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtplan.workflows.codegen import identifier

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState, ObservedObject
    from virtplan.model import NIC, Disk, Host, Network, Resource, Stack, Volume
    from virtplan.workflows.importer.choose import Choice

Key = tuple[str, str]  # (kind, key)


class _Refused(Exception):
    """Why an object cannot be declared."""


@dataclass
class Declaration:
    """One object to declare: the model object built from the host's values, the
    variable it is declared as (None for VMs: nothing refers to them), what it needs."""

    kind: str
    key: str
    var: str | None
    resource: Resource
    refs: set[Key] = field(default_factory=set)
    note: str = ""  # a comment written above the declaration


class Declarer:
    """Builds the declarations of one host's objects, or the reason each cannot be declared."""

    def __init__(self, state: HostState, host: Host):
        self.state, self.host = state, host
        self.taken: set[str] = {"host"}
        self.decls: dict[Key, Declaration] = {}
        self.reasons: dict[Key, str] = {}

    def refuse(self, kind: str, key: str, reason: str) -> None:
        self.reasons[(kind, key)] = reason

    def resource(self, kind: str, key: str) -> Any:
        """The model object declared for (kind, key), or None."""
        decl = self.decls.get((kind, key))
        return decl.resource if decl is not None else None

    def add(self, decl: Declaration) -> None:
        self.decls[(decl.kind, decl.key)] = decl

    def pool(self, o: ObservedObject) -> None:
        from virtplan.model import Pool

        s = o.spec
        if s.get("type") != "dir":
            return self.refuse("pool", o.key, f"type {s.get('type')!r} (only dir pools are supported)")
        if not s.get("active"):
            return self.refuse("pool", o.key, "inactive (declaring it would start it)")
        var = identifier(o.key, self.taken, "_pool")
        pool = Pool(o.key, path=s["path"], autostart=bool(s.get("autostart")), host=self.host)
        self.add(Declaration("pool", o.key, var, pool))

    def network(self, o: ObservedObject) -> None:
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
        self.add(Declaration("network", o.key, var, Network(o.key, host=self.host, **kw)))

    def volume(self, o: ObservedObject) -> None:
        from virtplan.model import Volume

        s = o.spec
        pool_key, _, name = o.key.partition("/")
        pool = self.resource("pool", pool_key)
        if pool is None:
            return self.refuse("volume", o.key, f"its pool {pool_key!r} is not imported")
        if s.get("format") not in ("qcow2", "raw"):
            return self.refuse("volume", o.key, f"format {s.get('format')!r} (qcow2 and raw are supported)")
        capacity = int(s.get("capacity") or 0)
        if capacity <= 0 or (s.get("format") == "qcow2" and capacity % 512):
            return self.refuse("volume", o.key, f"capacity {capacity} is not a whole number of sectors")
        refs = {("pool", pool_key)}
        kw: dict[str, Any] = {"size": capacity, "format": s["format"]}
        backing = s.get("backing")
        if backing:
            inner = next((v for v in self.state.of_kind("volume") if v.uuid == backing), None)
            if inner is not None and self.resource("volume", inner.key) is not None:
                kw["backing"] = self.resource("volume", inner.key)
                refs.add(("volume", inner.key))
            else:  # an image on the host that is not imported
                fmt = inner.spec.get("format") if inner is not None else "qcow2"
                kw["backing"], kw["backing_format"] = backing, fmt
        var = identifier(name, self.taken)
        self.add(Declaration("volume", o.key, var, Volume(name, pool=pool, **kw), refs))

    def vm(self, o: ObservedObject) -> None:
        try:
            self._vm(o)
        except _Refused as why:
            self.refuse("vm", o.key, str(why))

    def _vm(self, o: ObservedObject) -> None:
        from virtplan.model import VM, Graphics

        s = o.spec
        if self.host.domain_type and s.get("type") != self.host.domain_type:
            raise _Refused(f"domain type {s.get('type')!r}, but the host is imported as {self.host.domain_type!r}")
        refs: set[Key] = set()
        disks, nics = self._disks(o, refs), self._nics(o, refs)
        graphics = None
        if gfx := s.get("graphics"):
            if not gfx.get("listen"):
                raise _Refused("its console has no listen address")
            graphics = Graphics(gfx["type"], listen=gfx["listen"])
        boot: dict[str, Any] = {}
        for name in ("kernel", "initrd"):
            if path := s.get(name):
                found = next((v for v in self.state.of_kind("volume") if v.uuid == path), None)
                if found is None or self.resource("volume", found.key) is None:
                    raise _Refused(f"its {name} {path} is not an imported pool volume")
                boot[name] = self.resource("volume", found.key)
                refs.add(("volume", found.key))
        vm = VM(
            o.key, host=self.host, vcpus=s["vcpus"], max_vcpus=s["max_vcpus"], memory=s["memory"],
            max_memory=s["max_memory"], machine=s.get("machine"), arch=s.get("arch"),
            firmware=s.get("firmware", "bios"), disks=disks, nics=nics, graphics=graphics,
            serial=bool(s.get("serial")), autostart=bool(s.get("autostart")), state=s["state"],
            description=s.get("description") or "", cmdline=s.get("cmdline") or None,
            console_log=s.get("console_log") is not None, **boot,
        )  # fmt: skip
        self.add(Declaration("vm", o.key, None, vm, refs))  # its note: check._note_unmodelled

    def _disks(self, o: ObservedObject, refs: set[Key]) -> list[Disk | Volume]:
        """The VM's disks, each on an imported volume."""
        from virtplan.documents.render import target_names
        from virtplan.model import Disk
        from virtplan.model.resources import DISK_BUSES

        specs = o.spec.get("disks", [])
        buses = [d.get("bus") for d in specs]
        if any(b not in DISK_BUSES for b in buses):
            raise _Refused(f"a disk on bus {next(b for b in buses if b not in DISK_BUSES)!r}")
        targets = _targets(o.xml)
        auto = target_names([str(b) for b in buses])
        disks: list[Disk | Volume] = []
        for i, d in enumerate(specs):
            if d.get("device") != "disk":
                raise _Refused(f"disks[{i}] is a {d.get('device')} (virtplan models disks only)")
            key = d.get("volume") or ""
            volume = self.resource("volume", key)
            if volume is None:
                raise _Refused(f"disks[{i}] {key}: {self.reasons.get(('volume', key), 'not in any storage pool')}")
            refs.add(("volume", key))
            target = targets[i] if i < len(targets) and targets[i] and targets[i] != auto[i] else None
            disks.append(Disk(volume, bus=d["bus"], boot=d.get("boot") or None, target=target))
        return disks

    def _nics(self, o: ObservedObject, refs: set[Key]) -> list[NIC | Network]:
        """The VM's NICs, each on an imported network (with its reserved IP) or a host bridge."""
        from virtplan.model import NIC
        from virtplan.model.resources import NIC_MODELS

        nics: list[NIC | Network] = []
        for i, n in enumerate(o.spec.get("nics", [])):
            if n.get("model") not in NIC_MODELS:
                raise _Refused(f"nics[{i}] has model {n.get('model')!r} (virtplan models {', '.join(NIC_MODELS)})")
            if not n.get("network"):
                nics.append(NIC(bridge=n.get("bridge"), model=n["model"], mac=n["mac"]))
                continue
            network = self.resource("network", n["network"])
            if network is None:
                why = self.reasons.get(("network", n["network"]), "not imported")
                raise _Refused(f"nics[{i}] network {n['network']}: {why}")
            refs.add(("network", n["network"]))
            nics.append(NIC(network, model=n["model"], mac=n["mac"], ip=self._reserved_ip(n["network"], n["mac"])))
        return nics

    def _reserved_ip(self, network: str, mac: str) -> str | None:
        """The IP `network` reserves for `mac` (the NIC's fixed IP), if any."""
        net = self.state.get("network", network)
        for r in (net.spec.get("reservations") or []) if net is not None else []:
            if r.get("mac") == mac:
                return str(r.get("ip"))
        return None


def _targets(domain_xml: str) -> list[str]:
    """Each disk's target device name ("vda"), in order; "" where it has none."""
    import xml.etree.ElementTree as ET

    out = []
    for disk in ET.fromstring(domain_xml).iterfind("devices/disk"):
        target = disk.find("target")
        out.append(target.get("dev", "") if target is not None else "")
    return out


def declare(state: HostState, choice: Choice, host_name: str, uri: str, excluded: dict[Key, str],
            stack_name: str) -> tuple[Declarer, Stack]:  # fmt: skip
    """The declarations of the chosen objects not `excluded`, in a stack of their own: pools
    and networks, volumes (backing first), then VMs; the host's domain type is the one
    most of its VMs have."""
    from virtplan.model import Host, Stack, collecting
    from virtplan.workflows.importer.choose import backing_first

    types = Counter(o.spec.get("type") for o in choice.vms if ("vm", o.key) not in excluded)
    domain_type = types.most_common(1)[0][0] if types else None
    stack = Stack(stack_name)
    with collecting(stack):
        b = Declarer(state, Host(host_name, uri=uri, domain_type=domain_type))
        b.reasons.update(excluded)
        for o in choice.pools:
            if ("pool", o.key) not in excluded:
                b.pool(o)
        for o in choice.networks:
            if ("network", o.key) not in excluded:
                b.network(o)
        for o in backing_first(choice.volumes):
            if ("volume", o.key) not in excluded:
                b.volume(o)
        for o in choice.vms:
            if ("vm", o.key) not in excluded:
                b.vm(o)
    return b, stack
