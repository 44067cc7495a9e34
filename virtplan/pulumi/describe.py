"""One virtplan resource as Pulumi inputs, and back.

`describe` turns a declared resource into a plain, JSON-able dict (the dynamic resource's
inputs, camelCase keys): its own fields, its host and stack name, and a full description of
every resource it refers to (a volume's pool and backing volume, a VM's volumes and
networks), plus, for a network, the DHCP reservations the stack's VMs ask of it.

`rebuild` turns such a dict back into model objects inside a fresh *context* stack (the
resource, its references and stand-ins for the VMs behind its reservations, so rendering
is exactly the CLI's) and a *plan* stack holding the host, the resource and what it refers
to (the planner needs a closed stack; the provider keeps only the resource's change). No
libvirt or Pulumi import here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtplan.errors import FieldError, ValidationError
from virtplan.hosts.ledger import DEFAULT_PATH, DEFAULT_POOL
from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Resource, Stack, Volume
from virtplan.model.registry import collecting
from virtplan.model.secrets import Secret
from virtplan.model.validate import validate
from virtplan.plan.policy import FIELDS, Policy

Inputs = dict[str, Any]

#: Keys a provider adds to the inputs in its outputs (plus the SDK's own "__provider").
OUTPUT_KEYS = frozenset(
    {"__provider", "address", "observed", "uuid", "macAddresses", "ipAddresses", "volumePath", "bridgeName"}
)
KINDS = ("network", "pool", "volume", "vm")
_STUB_BRIDGE = "virtplan-stub"


def camel(name: str) -> str:
    """snake_case -> camelCase, per dotted segment: 'disks[0].max_memory' -> 'disks[0].maxMemory'."""
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), part) for part in name.split("."))


def input_key(kind: str, field: str) -> str:
    """The input property that carries a planner field (for `replaces` and drift)."""
    special = {("vm", "type"): "host", ("volume", "capacity"): "size"}
    return special.get((kind, field), camel(field))


def input_policy(kind: str, key: str) -> Policy | None:
    """The policy of an input key, from the planner's field table (None: not a libvirt field)."""
    for field, pol in FIELDS[kind].items():
        if input_key(kind, field) == key:
            return pol
    return None


def pulumi_name(resource: Resource) -> str:
    """The Pulumi resource name: host-qualified so it stays stable when hosts are added."""
    assert resource.host is not None
    return f"{resource.host.name}/{resource.key}"


# -- model -> inputs -----------------------------------------------------------------------
def describe(resource: Resource, stack: Stack) -> Inputs:
    """The dynamic resource inputs for one declared resource of a validated stack."""
    host = resource.host
    assert host is not None, "describe() needs a validated stack"
    out: Inputs = {
        "stack": stack.name,
        "name": resource.name,
        "host": {"name": host.name, "uri": host.uri, "domainType": host.domain_type},
    }
    if host.workers is not None:  # else sized from the host (virtplan.apply.concurrency)
        out["host"]["workers"] = host.workers
    if stack.project:
        out["project"] = stack.project
    if (host.records_pool, host.records_path) != (DEFAULT_POOL, DEFAULT_PATH):
        out["host"].update(recordsPool=host.records_pool, recordsPath=host.records_path)
    if isinstance(resource, Network):
        out.update(_network(resource))
        out["reservations"] = _reservations(resource, stack)
    elif isinstance(resource, Pool):
        out.update(_pool(resource))
    elif isinstance(resource, Volume):
        out.update(_volume(resource))
    elif isinstance(resource, VM):
        out.update(_vm(resource))
    else:  # pragma: no cover - the model has no other kinds
        raise TypeError(resource)
    return out


def _network(net: Network) -> Inputs:
    return {
        "mode": net.mode,
        "cidr": net.cidr,
        "gateway": net.gateway,
        "dhcp": net.dhcp,
        "dhcpRange": list(net.dhcp_range) if net.dhcp_range else None,
        "domain": net.domain,
        "autostart": net.autostart,
        "bridge": net.bridge,
        **({"existing": True} if net.existing is True else {}),  # referred to by name, not managed
    }


def _reservations(net: Network, stack: Stack) -> list[Inputs]:
    """Fixed IPs the stack's VMs take on `net`: VM name, NIC position, declared MAC, IP."""
    found = []
    for vm in stack.vms:
        for i, nic in enumerate(vm.nics):
            if nic.network is net and nic.ip:
                found.append({"vm": vm.name, "nic": i, "mac": nic.mac.lower() if nic.mac else None, "ip": nic.ip})
    return sorted(found, key=lambda r: (r["vm"], r["nic"]))


def _pool(pool: Pool) -> Inputs:
    return {"path": str(pool.path), "type": pool.type, "autostart": pool.autostart}


def _volume(vol: Volume) -> Inputs:
    assert vol.pool is not None
    backing: Inputs | None = None
    if isinstance(vol.backing, Volume):
        backing = {"name": vol.backing.name, **_volume(vol.backing)}
    elif isinstance(vol.backing, str):  # an image on the host the stack does not manage (clones)
        backing = {"path": vol.backing, "format": vol.backing_format}
    out = {
        "pool": {"name": vol.pool.name, **_pool(vol.pool)},
        "size": vol.size,
        "format": vol.format,
        "backing": backing,
        "source": _source(vol.source),
    }
    if vol.copy_of is not None:
        out["copyOf"] = vol.copy_of
    for algo in ("sha256", "sha512"):  # a URL source's checksum
        if getattr(vol, algo) is not None:
            out[algo] = getattr(vol, algo)
    return out


def _source(source: str | None) -> str | None:
    from virtplan.model.images import is_url

    if source is None or is_url(source):
        return source
    return str(Path(source).absolute())


def _reveal(value: Secret | str | None) -> str | None:
    return value.reveal() if isinstance(value, Secret) else value


def _vm(vm: VM) -> Inputs:
    ci = vm.cloud_init
    gfx = vm.graphics
    return {
        "vcpus": vm.vcpus,
        "maxVcpus": vm.max_vcpus,
        "memory": vm.memory,
        "maxMemory": vm.max_memory,
        "machine": vm.machine,
        "arch": vm.arch,
        "firmware": vm.firmware,
        "disks": [
            {"volume": {"name": d.volume.name, **_volume(d.volume)}, "bus": d.bus, "boot": d.boot, "target": d.target}
            for d in vm.disks
        ],
        "nics": [
            {
                "network": {"name": n.network.name, **_network(n.network)} if n.network is not None else None,
                "bridge": n.bridge,
                "model": n.model,
                "mac": n.mac,
                "ip": n.ip,
            }
            for n in vm.nics
        ],
        "cloudInit": None
        if ci is None
        else {
            "userData": ci.document("user_data"),
            "metaData": ci.document("meta_data"),
            "networkConfig": ci.document("network_config"),
            "sensitive": ci.sensitive,
            "hostname": ci.hostname,
            "user": ci.user,
            "password": _reveal(ci.password),
            "sshKeys": list(ci.ssh_keys),
            "packages": list(ci.packages),
            "instanceId": ci.instance_id,
        },
        "graphics": None
        if gfx is None
        else {"type": gfx.type, "listen": gfx.listen, "password": _reveal(gfx.password)},
        "serial": vm.serial,
        "autostart": vm.autostart,
        "state": vm.state,
        "description": vm.description,
        "shutdownTimeout": vm.shutdown_timeout,
        "kernel": None if vm.kernel is None else {"name": vm.kernel.name, **_volume(vm.kernel)},
        "initrd": None if vm.initrd is None else {"name": vm.initrd.name, **_volume(vm.initrd)},
        "cmdline": vm.cmdline,
        "consoleLog": vm.console_log,
    }


# -- inputs -> model -----------------------------------------------------------------------
class InputError(ValueError):
    """Inputs that do not describe a virtplan resource (a missing or mistyped key)."""


@dataclass
class Rebuilt:
    """A resource rebuilt from inputs, with the stacks the engine needs around it."""

    kind: str
    target: Resource
    host: Host
    context: Stack  # the target, its references, stand-ins for reservation holders
    plan: Stack  # the host, the target and its references: the planner's view (only the target is kept)

    @property
    def address(self) -> str:
        return self.target.address


def inputs_of(props: dict[str, Any]) -> Inputs:
    """Inputs from inputs or outputs: drops what providers add (outputs, the serialized provider)."""
    return {k: v for k, v in props.items() if k not in OUTPUT_KEYS}


def identity(kind: str, inputs: Inputs) -> dict[str, Any]:
    """What names the libvirt object, by input key: stack, name, host (its name), pool (a volume's)."""
    host = inputs.get("host") or {}
    out = {"stack": inputs.get("stack"), "name": inputs.get("name"), "host": host.get("name")}
    if inputs.get("project"):
        out["project"] = inputs["project"]
    if kind == "volume":
        out["pool"] = (inputs.get("pool") or {}).get("name")
    return out


def _num(value: Any) -> Any:
    """Pulumi sends numbers as floats: whole floats become ints again."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _req(data: dict[str, Any], key: str, where: str) -> Any:
    if not isinstance(data, dict) or data.get(key) is None:
        raise InputError(f"{where}: missing {key!r}")
    return data[key]


class _Builder:
    """Creates model objects inside the context stack, each referenced object once."""

    def __init__(self, host: Host):
        self.host = host
        self.pools: dict[str, Pool] = {}
        self.volumes: dict[tuple[str, str], Volume] = {}
        self.networks: dict[str, Network] = {}

    def pool(self, d: Inputs) -> Pool:
        name = _req(d, "name", "pool")
        if name not in self.pools:
            self.pools[name] = Pool(
                name, path=_req(d, "path", f"pool {name}"), host=self.host,
                type=d.get("type") or "dir", autostart=bool(d.get("autostart", True)),
            )  # fmt: skip
        return self.pools[name]

    def volume(self, d: Inputs) -> Volume:
        name = _req(d, "name", "volume")
        pool = self.pool(_req(d, "pool", f"volume {name}"))
        key = (pool.name, name)
        if key not in self.volumes:
            raw = d.get("backing")
            path = raw.get("path") if isinstance(raw, dict) else None
            backing: Volume | str | None = path or (self.volume(raw) if raw else None)
            self.volumes[key] = Volume(
                name, pool=pool, size=_num(d.get("size")), format=d.get("format") or "qcow2",
                backing=backing, source=d.get("source"), copy_of=d.get("copyOf"),
                backing_format=raw.get("format") if path and isinstance(raw, dict) else None,
                sha256=d.get("sha256"), sha512=d.get("sha512"),
            )  # fmt: skip
        return self.volumes[key]

    def network(self, d: Inputs) -> Network:
        name = _req(d, "name", "network")
        if name not in self.networks:
            rng = d.get("dhcpRange")
            self.networks[name] = Network(
                name, host=self.host, mode=d.get("mode") or "nat", cidr=d.get("cidr"), gateway=d.get("gateway"),
                dhcp=bool(d.get("dhcp", True)), dhcp_range=(rng[0], rng[1]) if rng else None,
                domain=d.get("domain"), autostart=bool(d.get("autostart", True)), bridge=d.get("bridge"),
                existing=bool(d.get("existing", False)),
            )  # fmt: skip
        return self.networks[name]

    def vm(self, d: Inputs) -> VM:
        name = _req(d, "name", "vm")
        disks = [
            Disk(self.volume(_req(x, "volume", f"vm {name} disk")), bus=x.get("bus") or "virtio",
                 boot=_num(x.get("boot")), target=x.get("target"))
            for x in d.get("disks") or []
        ]  # fmt: skip
        nics = [
            NIC(network=self.network(x["network"]) if x.get("network") else None, bridge=x.get("bridge"),
                model=x.get("model") or "virtio", mac=x.get("mac"), ip=x.get("ip"))
            for x in d.get("nics") or []
        ]  # fmt: skip
        ci = d.get("cloudInit")
        cloud_init = None
        if ci:
            cloud_init = CloudInit(
                user_data=ci.get("userData"), meta_data=ci.get("metaData"), network_config=ci.get("networkConfig"),
                hostname=ci.get("hostname"), user=ci.get("user"), password=ci.get("password"),
                ssh_keys=list(ci.get("sshKeys") or []), packages=list(ci.get("packages") or []),
                instance_id=ci.get("instanceId"), sensitive=ci.get("sensitive", True),
            )  # fmt: skip
        gfx = d.get("graphics")
        graphics = (
            Graphics(gfx.get("type") or "vnc", gfx.get("listen") or "127.0.0.1", gfx.get("password")) if gfx else None
        )
        return VM(
            name, host=self.host, vcpus=_num(d.get("vcpus", 1)), memory=_num(d.get("memory", "512MiB")),
            max_vcpus=_num(d.get("maxVcpus")), max_memory=_num(d.get("maxMemory")), machine=d.get("machine"),
            arch=d.get("arch"), firmware=d.get("firmware") or "bios", disks=list(disks), nics=list(nics),
            cloud_init=cloud_init, graphics=graphics, serial=bool(d.get("serial", True)),
            autostart=bool(d.get("autostart", False)), state=d.get("state") or "running",
            description=d.get("description") or "", shutdown_timeout=_num(d.get("shutdownTimeout", 60.0)),
            kernel=self.volume(d["kernel"]) if d.get("kernel") else None,
            initrd=self.volume(d["initrd"]) if d.get("initrd") else None,
            cmdline=d.get("cmdline"), console_log=bool(d.get("consoleLog", True)),
        )  # fmt: skip

    def reservation_holders(self, net: Network, reservations: list[Inputs]) -> None:
        """Stand-in VMs whose NICs carry `net`'s reservations at their declared positions."""
        by_vm: dict[str, dict[int, Inputs]] = {}
        for r in reservations:
            by_vm.setdefault(_req(r, "vm", "reservation"), {})[int(_num(_req(r, "nic", "reservation")))] = r
        for vm_name, slots in by_vm.items():
            nics: list[NIC | Network] = [
                NIC(network=net, ip=slots[i]["ip"], mac=slots[i].get("mac")) if i in slots else NIC(bridge=_STUB_BRIDGE)
                for i in range(max(slots) + 1)
            ]
            VM(vm_name, host=self.host, nics=nics)


def rebuild(kind: str, inputs: Inputs, template_dir: str | None = None) -> Rebuilt:
    """Model objects for `inputs` of a `kind` resource; raises InputError on malformed inputs."""
    if kind not in KINDS:
        raise InputError(f"unknown kind {kind!r}")
    try:
        return _rebuild(kind, inputs, template_dir)
    except InputError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise InputError(f"inputs do not describe a virtplan {kind}: {type(exc).__name__}: {exc}") from exc


def _rebuild(kind: str, inputs: Inputs, template_dir: str | None) -> Rebuilt:
    stack_name = _req(inputs, "stack", kind)
    h = _req(inputs, "host", kind)
    context = Stack(stack_name, project=inputs.get("project") or "")
    context.template_dir = Path(template_dir) if template_dir else None
    with collecting(context):
        host = Host(
            _req(h, "name", "host"), uri=_req(h, "uri", "host"), domain_type=h.get("domainType"),
            workers=int(_num(h["workers"])) if h.get("workers") else None,
            records_pool=h.get("recordsPool") or DEFAULT_POOL, records_path=h.get("recordsPath") or DEFAULT_PATH,
        )  # fmt: skip
        b = _Builder(host)
        target: Resource
        if kind == "network":
            net = b.network(inputs)
            b.reservation_holders(net, list(inputs.get("reservations") or []))
            target = net
        elif kind == "pool":
            target = b.pool(inputs)
        elif kind == "volume":
            target = b.volume(inputs)
        else:
            target = b.vm(inputs)
    plan = Stack(stack_name, project=context.project)
    plan.template_dir = context.template_dir
    plan.resources = [host, *_closure(target), target]
    return Rebuilt(kind, target, host, context, plan)


def _closure(resource: Resource) -> list[Resource]:
    """Everything `resource` refers to, directly or not (the planner orders a stack by its references)."""
    seen: dict[int, Resource] = {}
    todo = list(resource.dependencies())
    while todo:
        dep = todo.pop()
        if id(dep) not in seen:
            seen[id(dep)] = dep
            todo += dep.dependencies()
    return list(seen.values())


def failures(rebuilt: Rebuilt) -> list[FieldError]:
    """The stack validation's findings on this resource and its host (property paths camelCase)."""
    try:
        validate(rebuilt.context)
    except ValidationError as exc:
        found = []
        for e in exc.errors:
            if e.address == rebuilt.address:
                found.append(FieldError(e.address, camel(e.field), e.message))
            elif e.address == rebuilt.host.address:
                found.append(FieldError(e.address, "host." + camel(e.field), e.message))
        return found
    return []


def contains_unknowns(value: Any) -> bool:
    """True if any value is not known until apply: the SDK hands a provider `pulumi.output.Unknown`
    objects during a real preview (and the wire placeholder string under some test harnesses)."""
    from pulumi.output import Unknown
    from pulumi.runtime.rpc import UNKNOWN

    if isinstance(value, dict):
        return any(contains_unknowns(v) for v in value.values())
    if isinstance(value, list):
        return any(contains_unknowns(v) for v in value)
    return isinstance(value, Unknown) or value == UNKNOWN


def size_text(size: int) -> str | int:
    """An exact size with the largest binary unit that divides it ('256MiB'), else bytes."""
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return size


#: Planner fields that map back to one input key on refresh, with how to write the value.
_DRIFT_INPUTS: dict[str, dict[str, Any]] = {
    "vm": {
        "vcpus": int, "max_vcpus": int, "memory": size_text, "max_memory": size_text, "firmware": str,
        "machine": str, "arch": str, "serial": bool, "autostart": bool, "state": str, "description": str,
        "cmdline": str,
    },
    "network": {
        "mode": str, "bridge": str, "cidr": str, "gateway": str, "dhcp": bool, "domain": str, "autostart": bool,
        "dhcp_range": lambda v: v.split("-", 1) if isinstance(v, str) else v,
    },
    "pool": {"type": str, "path": str, "autostart": bool},
    "volume": {"format": str, "capacity": size_text},
}  # fmt: skip


def with_drift(kind: str, inputs: Inputs, drift: dict[str, Any]) -> Inputs:
    """`inputs` with each drifted field that has an input of its own set to the actual value."""
    out = dict(inputs)
    for field, actual in drift.items():
        convert = _DRIFT_INPUTS[kind].get(field)
        if convert is not None:
            out[input_key(kind, field)] = convert(actual) if actual is not None else None
    return out
