"""Clone a deployed environment: `virtplan clone STACK --name N`.

The clone is an ordinary stack, written as a readable program (`stacks/<N>.py`) and then
applied, so plan, apply, drift, destroy and Pulumi work on it as on any stack:

- every VM gets a new name (`<N>-<vm>`), a new UUID (libvirt's) and new MACs (derived
  from the clone's name; MACs the source pins are dropped);
- networks are recreated under new names as *isolated* networks with mapped subnets
  (`--subnet-map`, else a free subnet is picked where the old one would clash); fixed IPs,
  gateways and DHCP ranges keep their place in the subnet; host bridges are replaced by
  an isolated network unless `--connected` keeps forward modes and bridges;
- disks are *linked clones*: the source VM's disks are frozen (`virtplan.apply.layers`: the
  source keeps running on new layers, its frozen files are never written again) and each
  clone disk is a qcow2 overlay on a frozen file. Time does not depend on disk size.
  `--full` makes full copies instead (libvirt copies on the host); VMs moved to another
  host (`--host-map`) always get full copies, streamed through this machine;
- cloud-init identity (hostname, instance-id) is regenerated; the rest of the seed is
  the source's, read from the source program (`source_stack`), so secrets stay there;
- `--from-snapshot NAME` starts from a disk-only snapshot instead of the current state.

The frozen source files belong to the source stack, which refuses to delete them while a
clone backs onto them (`virtplan.plan.protection`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import itertools
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.errors import VirtplanError
from virtplan.units import exact_size
from virtplan.workflows.codegen import identifier, literal

if TYPE_CHECKING:
    from virtplan.engine import Engine, Observation
    from virtplan.model import VM, CloudInit, Network, Stack

Progress = Callable[[str], None]
#: Subnets tried for clone networks when the source's would clash (a clone's own range).
AUTO_SUBNETS = ipaddress.IPv4Network("10.128.0.0/9")


class CloneError(VirtplanError):
    """The environment cannot be cloned as asked; nothing was created."""


@dataclass
class CloneOptions:
    """What `virtplan clone` was asked for."""

    name: str
    subnet_map: dict[str, str] = field(default_factory=dict)
    host_map: dict[str, str] = field(default_factory=dict)
    full: bool = False
    from_snapshot: str | None = None
    connected: bool = False
    state: str | None = None  # every clone VM "running" or "stopped"; None keeps the source's
    out: Path | None = None


@dataclass
class CloneResult:
    name: str
    stack_file: Path
    vms: dict[str, str]  # source VM name -> clone VM name
    networks: dict[str, tuple[str, str | None]]  # source network address -> (clone name, cidr)
    frozen: dict[str, str]  # "<vm>/<target>" -> frozen source file the clone builds on
    mode: str  # linked | full
    seconds: float = 0.0


# -- the source program, for clone programs ----------------------------------------------------
class SourceStack:
    """A source stack program loaded read-only, for a clone program to take settings from
    (its resources are not part of the clone)."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def vm(self, name: str) -> VM:
        for vm in self.stack.vms:
            if vm.name == name:
                return vm
        raise CloneError(f"source stack {self.stack.name!r} no longer declares VM {name!r}")

    def cloud_init(self, vm: str, *, hostname: str, instance_id: str) -> CloudInit | None:
        """The source VM's cloud-init settings with a new identity (raw meta-data dropped:
        it is generated from the new hostname and instance-id)."""
        ci = self.vm(vm).cloud_init
        if ci is None:
            return None
        return dataclasses.replace(ci, hostname=hostname, instance_id=instance_id, meta_data=None)


_sources: dict[Path, SourceStack] = {}


def source_stack(path: str | os.PathLike[str]) -> SourceStack:
    """Load a source stack program (relative paths: from the calling stack's folder)
    without adding its resources to the stack being loaded."""
    from virtplan.model import Stack, collecting, current_stack

    file = Path(path)
    if not file.is_absolute():
        current = current_stack()
        base = current.path.parent if current is not None and current.path is not None else Path.cwd()
        file = base / file
    file = file.resolve()
    if file not in _sources:
        import runpy

        if not file.is_file():
            raise CloneError(f"source stack program {file} not found (the clone takes cloud-init settings from it)")
        stack = Stack(file.stem, file)
        with collecting(stack):
            runpy.run_path(str(file), run_name=f"virtplan_source_{file.stem}")
        _sources[file] = SourceStack(stack)
    return _sources[file]


# -- the clone's design (pure) ----------------------------------------------------------------
@dataclass
class _Net:
    var: str
    name: str
    host: str
    mode: str
    cidr: str | None
    gateway: str | None
    dhcp: bool
    dhcp_range: tuple[str, str] | None
    domain: str | None
    autostart: bool
    bridge: str | None
    source: str  # what it replaces, for the header


@dataclass
class _Pool:
    var: str
    name: str
    host: str
    path: str


@dataclass
class _Vol:
    name: str
    pool: str  # pool var
    size: int
    format: str
    backing: str | None = None
    backing_format: str | None = None
    copy_of: str | None = None
    source: str | None = None


@dataclass
class _Disk:
    volume: _Vol
    bus: str
    boot: int | None
    target: str | None
    source_volume: str  # "pool/name" in the source


@dataclass
class _Nic:
    network: str | None  # net var
    bridge: str | None
    model: str
    ip: str | None


@dataclass
class _VM:
    source: VM
    name: str
    host: str
    disks: list[_Disk]
    nics: list[_Nic]
    kernel: _Vol | None = None
    initrd: _Vol | None = None


@dataclass
class _Design:
    hosts: list[str]
    nets: list[_Net]
    pools: list[_Pool]
    vms: list[_VM]


def _shift(ip: str | ipaddress.IPv4Address, old: ipaddress.IPv4Network, new: ipaddress.IPv4Network, what: str) -> str:
    offset = int(ipaddress.IPv4Address(ip)) - int(old.network_address)
    moved = ipaddress.IPv4Address(int(new.network_address) + offset)
    if moved not in new or moved in (new.network_address, new.broadcast_address):
        raise CloneError(f"{what} {ip} has no place in {new} (mapped from {old}); map to a subnet at least as big")
    return str(moved)


def _free_subnet(prefix: int, taken: list[ipaddress.IPv4Network], seed: str) -> ipaddress.IPv4Network:
    count = 2 ** (prefix - AUTO_SUBNETS.prefixlen) if prefix >= AUTO_SUBNETS.prefixlen else 0
    if not count:
        raise CloneError(f"no free /{prefix} subnet to give the clone; pass --subnet-map OLD=NEW")
    size, base = 2 ** (32 - prefix), int(AUTO_SUBNETS.network_address)
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % count
    for i in range(count):
        net = ipaddress.IPv4Network((base + ((start + i) % count) * size, prefix))
        if not any(net.overlaps(t) for t in taken):
            return net
    raise CloneError(f"no free /{prefix} subnet to give the clone; pass --subnet-map OLD=NEW")


def design(src: Stack, observation: Observation, opts: CloneOptions) -> _Design:
    """Names, hosts, networks, pools and VMs of the clone; disks are filled in later."""
    _check_options(src, opts)
    taken_vars: set[str] = {"SOURCE"}
    host_vars: dict[str, str] = {}

    def target(host: str) -> str:
        return opts.host_map.get(host, host)

    def host_var(host: str) -> str:
        if host not in host_vars:
            host_vars[host] = identifier(host, taken_vars)
        return host_vars[host]

    # subnets in use on each target host, so auto-picked ones never clash
    used: dict[str, list[ipaddress.IPv4Network]] = {}
    for hname, hstate in observation.hosts.items():
        used[hname] = [ipaddress.IPv4Network(o.spec["cidr"]) for o in hstate.of_kind("network") if o.spec.get("cidr")]
    for net in src.networks:
        new_text = opts.subnet_map.get(str(net.ip_network)) if net.cidr else None
        assert net.host is not None
        if new_text is not None:
            new = ipaddress.IPv4Network(new_text)
            clash = [str(t) for t in used.get(target(net.host.name), []) if t.overlaps(new)]
            if clash:
                raise CloneError(f"--subnet-map {net.cidr}={new}: {new} overlaps {', '.join(clash)}, already on host "
                                 f"{target(net.host.name)!r}; map to a free subnet")  # fmt: skip
    for new_text in opts.subnet_map.values():
        for subnets in used.values():
            subnets.append(ipaddress.IPv4Network(new_text))
    nets: list[_Net] = []
    net_by_source: dict[int, _Net] = {}
    for net in src.networks:
        assert net.host is not None
        _net = _clone_network(net, target(net.host.name), opts, used, host_var, taken_vars)
        nets.append(_net)
        net_by_source[id(net)] = _net
    pools: dict[tuple[str, str], _Pool] = {}
    vms: list[_VM] = []
    bridges: dict[tuple[str, str], _Net] = {}
    for vm in src.vms:
        assert vm.host is not None
        h = target(vm.host.name)
        host_var(h)
        clone_vm = _VM(vm, f"{opts.name}-{vm.name}", h, [], [])
        for disk in vm.disks:
            vol = disk.volume
            assert vol.pool is not None
            pool = _clone_pool(vol.pool.name, vol.pool.path, h, opts, pools, taken_vars)
            name = f"{opts.name}-{vol.name}"
            if not opts.full and h == vm.host.name:
                name = re.sub(r"\.(raw|img)$", ".qcow2", name)
            placeholder = _Vol(name, pool.var, 0, vol.format)
            clone_vm.disks.append(_Disk(placeholder, disk.bus, disk.boot, disk.target, vol.key))
        for extra in ("kernel", "initrd"):
            boot_file = getattr(vm, extra, None)
            if boot_file is not None and boot_file.pool is not None:
                pool = _clone_pool(boot_file.pool.name, boot_file.pool.path, h, opts, pools, taken_vars)
                setattr(clone_vm, extra, _Vol(f"{opts.name}-{boot_file.name}", pool.var, 0, boot_file.format))
        for nic in vm.nics:
            ip = None
            if nic.network is not None:
                cnet = net_by_source[id(nic.network)]
                if nic.ip and nic.network.cidr and cnet.cidr:
                    ip = _shift(nic.ip, nic.network.ip_network, ipaddress.IPv4Network(cnet.cidr), f"{vm.address} ip")
                clone_vm.nics.append(_Nic(cnet.var, None, nic.model, ip))
            elif opts.connected:
                clone_vm.nics.append(_Nic(None, nic.bridge, nic.model, None))
            else:  # a host bridge would reach the source's network: an isolated one instead
                key = (h, nic.bridge or "")
                if key not in bridges:
                    name = f"{opts.name}-{nic.bridge}"
                    var = identifier(name, taken_vars)
                    bridges[key] = _Net(var, name, h, "isolated", None, None, False, None, None,
                                        True, None, f"host bridge {nic.bridge}")  # fmt: skip
                    nets.append(bridges[key])
                clone_vm.nics.append(_Nic(bridges[key].var, None, nic.model, None))
        vms.append(clone_vm)
    for n in nets:
        host_var(n.host)
    return _Design(list(host_vars), nets, list(pools.values()), vms)


def _check_options(src: Stack, opts: CloneOptions) -> None:
    from virtplan.model.validate import MAX_NAME

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opts.name or ""):
        raise CloneError(f"--name {opts.name!r}: use letters, digits, '.', '-', '_' (it prefixes every name)")
    if opts.name == src.name:
        raise CloneError(f"--name {opts.name!r} is the source stack's own name; pick another")
    longest = max((len(r.name) for r in src.managed()), default=0)
    if len(opts.name) + 1 + longest > MAX_NAME:
        raise CloneError(f"--name {opts.name!r} is too long: names would exceed {MAX_NAME} characters")
    hosts = {h.name for h in src.hosts}
    for a, b in opts.host_map.items():
        if a not in hosts or b not in hosts:
            known = ", ".join(sorted(hosts))
            raise CloneError(f"--host-map {a}={b}: both must be hosts of stack {src.name!r} ({known})")
    cidrs = {str(n.ip_network) for n in src.networks if n.cidr}
    for old, new in opts.subnet_map.items():
        try:
            o, n = ipaddress.IPv4Network(old), ipaddress.IPv4Network(new)
        except ValueError as exc:
            raise CloneError(f"--subnet-map {old}={new}: {exc}; write e.g. 10.20.0.0/24=10.99.0.0/24") from exc
        if str(o) not in cidrs:
            raise CloneError(f"--subnet-map {old}: no network of stack {src.name!r} has that subnet "
                             f"(it has {', '.join(sorted(cidrs)) or 'none'})")  # fmt: skip
        if n.prefixlen > o.prefixlen:
            raise CloneError(f"--subnet-map {old}={new}: the new subnet is smaller; give one at least as big")
    if opts.state not in (None, "running", "stopped"):
        raise CloneError(f"state {opts.state!r}: use running or stopped")


def _clone_network(
    net: Network,
    host: str,
    opts: CloneOptions,
    used: dict[str, list[ipaddress.IPv4Network]],
    host_var: Callable[[str], str],
    taken: set[str],
) -> _Net:
    name = f"{opts.name}-{net.name}"
    var = identifier(net.name if net.name.endswith("net") else f"{net.name}_net", taken)
    host_var(host)
    mode = net.mode if opts.connected else "isolated"
    if net.mode == "bridge":
        if opts.connected:
            return _Net(var, name, host, "bridge", None, None, False, None, None, net.autostart, net.bridge,
                        f"{net.address} (host bridge {net.bridge})")  # fmt: skip
        return _Net(var, name, host, "isolated", None, None, False, None, None, net.autostart, None,
                    f"{net.address} (host bridge {net.bridge}, isolated here)")  # fmt: skip
    if not net.cidr:
        return _Net(var, name, host, mode, None, None, net.dhcp, None, net.domain, net.autostart, None, net.address)
    old = net.ip_network
    if str(old) in opts.subnet_map:
        new = ipaddress.IPv4Network(opts.subnet_map[str(old)])
    elif not any(old.overlaps(t) for t in used.setdefault(host, [])):
        new = old  # nothing there has it (another host)
    else:
        new = _free_subnet(old.prefixlen, used[host], f"{opts.name}/{net.address}")
    used.setdefault(host, []).append(new)
    gateway = _shift(net.gateway, old, new, f"{net.address} gateway") if net.gateway else None
    rng = None
    if net.dhcp_range:
        rng = (_shift(net.dhcp_range[0], old, new, f"{net.address} dhcp_range"),
               _shift(net.dhcp_range[1], old, new, f"{net.address} dhcp_range"))  # fmt: skip
    return _Net(var, name, host, mode, str(new), gateway, net.dhcp, rng, net.domain, net.autostart, None,
                f"{net.address} {old}")  # fmt: skip


def _clone_pool(name: str, path: str, host: str, opts: CloneOptions, pools: dict[tuple[str, str], _Pool],
                taken: set[str]) -> _Pool:  # fmt: skip
    key = (host, name)
    if key not in pools:
        folder = Path(path)
        pools[key] = _Pool(identifier(f"{name}", taken), f"{opts.name}-{name}", host,
                           str(folder.parent / f"{opts.name}-{folder.name}"))  # fmt: skip
    return pools[key]


# -- the program ---------------------------------------------------------------------------
def _call(prefix: str, args: list[str], width: int = 100) -> str:
    """`prefix(args)` on one line, or one argument per line when that is too long."""
    line = f"{prefix}({', '.join(args)})"
    if len(line) <= width:
        return line
    return f"{prefix}(\n" + "".join(f"    {a},\n" for a in args) + ")"


def _vol_code(v: _Vol, prefix: str = "Volume") -> str:
    args = [literal(v.name), f"pool={v.pool}", f"size={literal(exact_size(v.size))}"]
    if v.format != "qcow2":
        args.append(f"format={literal(v.format)}")
    if v.backing:
        args.append(f"backing={literal(v.backing)}")
        if v.backing_format and v.backing_format != "qcow2":
            args.append(f"backing_format={literal(v.backing_format)}")
    if v.copy_of:
        args.append(f"copy_of={literal(v.copy_of)}")
    if v.source:
        args.append(f"source={literal(v.source)}")
    return _call(prefix, args)


def program(src: Stack, d: _Design, opts: CloneOptions, uris: dict[str, str], out: Path, mode: str,
            made: str) -> str:  # fmt: skip
    """The clone's stack program."""
    assert src.path is not None
    rel = os.path.relpath(src.path, out.parent)
    lines: list[str] = []
    header = [
        f"Clone {literal(opts.name)} of stack {literal(src.name)} ({rel}), made by `virtplan clone` at {made}.",
        "",
        "- VMs: " + ", ".join(f"{v.source.name} -> {v.name}" for v in d.vms) + ".",
    ]
    if mode == "linked":
        header += [
            "- Disks are linked clones: copy-on-write overlays on the source disks' state at clone",
            "  time, frozen then (the source VMs went on writing into new layers). The source never",
            "  sees what the clone writes, and the frozen files are never written again.",
        ]
    else:
        header.append("- Disks are full copies of the source disks' state at clone time.")
    if opts.from_snapshot:
        header.append(f"- That state is the source's disk-only snapshot {literal(opts.from_snapshot)}.")
    isolated = "connected like the source's" if opts.connected else "new and isolated"
    header.append(f"- Networks are {isolated}: " + "; ".join(
        f"{n.source} -> {n.name}" + (f" {n.cidr}" if n.cidr else "") for n in d.nets) + "." if d.nets else
        "- No networks.")  # fmt: skip
    header += [
        "- Cloud-init identity is regenerated (hostname, instance-id); the rest comes from the source",
        "  program, so its secrets stay there.",
        "",
        "Edit it like any stack. `virtplan destroy` on this file removes the clone and nothing else:",
        "the frozen source files belong to the source stack, which keeps them while clones use them.",
    ]
    lines.append('"""' + "\n".join(header).replace('"""', "'''") + '\n"""')
    lines.append("")
    names = ["VM", "Disk", "Host", "Network", "Pool", "Volume"]
    if any(n.network is not None or n.bridge is not None for v in d.vms for n in v.nics):
        names.append("NIC")
    if any(v.source.graphics is not None and v.source.graphics.password is None for v in d.vms):
        names.append("Graphics")
    uses_source = any(v.source.cloud_init is not None or _secret_graphics(v.source) for v in d.vms)
    if src.template_dir is not None:
        names.append("use_templates")
    lines.append(f"from virtplan import {', '.join(sorted(names, key=lambda s: (not s.isupper(), s)))}")
    if uses_source:
        lines.append("from virtplan.workflows.clone import source_stack")
    lines.append("")
    if uses_source:
        lines.append(f"SOURCE = source_stack({literal(rel)})  # cloud-init settings (and secrets) come from the source")
    if src.template_dir is not None:
        lines.append(
            f"use_templates({literal(os.path.relpath(src.template_dir, out.parent))})  # the source's templates"
        )
    lines.append("")
    host_vars = {}
    taken = {"SOURCE", *(n.var for n in d.nets), *(p.var for p in d.pools)}
    for h in d.hosts:
        host = src.host(h)
        host_vars[h] = identifier(h, taken)
        args = [literal(h), f"uri={literal(uris[h])}"]
        if host.domain_type:
            args.append(f"domain_type={literal(host.domain_type)}")
        if host.workers != 4:
            args.append(f"workers={host.workers}")
        lines.append(_call(f"{host_vars[h]} = Host", args))
    lines.append("")
    for n in d.nets:
        args = [literal(n.name), f"host={host_vars[n.host]}", f"mode={literal(n.mode)}"]
        if n.cidr:
            args.append(f"cidr={literal(n.cidr)}")
        if n.gateway:
            args.append(f"gateway={literal(n.gateway)}")
        if not n.dhcp:
            args.append("dhcp=False")
        if n.dhcp_range:
            args.append(f"dhcp_range={literal(n.dhcp_range)}")
        if n.domain:
            args.append(f"domain={literal(n.domain)}")
        if not n.autostart:
            args.append("autostart=False")
        if n.bridge:
            args.append(f"bridge={literal(n.bridge)}")
        lines.append(f"# was {n.source}")
        lines.append(_call(f"{n.var} = Network", args))
    for p in d.pools:
        lines.append(
            _call(f"{p.var} = Pool", [literal(p.name), f"host={host_vars[p.host]}", f"path={literal(p.path)}"])
        )
    for v in d.vms:
        lines += ["", *_vm_code(v, host_vars, opts, taken)]
    return "\n".join(lines) + "\n"


def _secret_graphics(vm: VM) -> bool:
    return vm.graphics is not None and vm.graphics.password is not None


def _vm_code(v: _VM, host_vars: dict[str, str], opts: CloneOptions, taken: set[str]) -> list[str]:
    vm = v.source
    head = [f"# {vm.address}"]
    out = ["VM(", f"    {literal(v.name)},", f"    host={host_vars[v.host]},"]
    out.append(f"    vcpus={literal(vm.vcpus)},")
    if vm.max_vcpus is not None:
        out.append(f"    max_vcpus={literal(vm.max_vcpus)},")
    out.append(f"    memory={literal(vm.memory)},")
    if vm.max_memory is not None:
        out.append(f"    max_memory={literal(vm.max_memory)},")
    for name in ("machine", "arch"):
        if getattr(vm, name):
            out.append(f"    {name}={literal(getattr(vm, name))},")
    if vm.firmware != "bios":
        out.append(f"    firmware={literal(vm.firmware)},")
    disks = []
    for disk in v.disks:
        var = identifier(re.sub(r"\.(qcow2|raw|img)$", "", disk.source_volume.partition("/")[2]) + "_disk", taken)
        head.append(_vol_code(disk.volume, f"{var} = Volume"))
        options = (("bus", disk.bus if disk.bus != "virtio" else None), ("boot", disk.boot), ("target", disk.target))
        extra = [f"{k}={literal(val)}" for k, val in options if val is not None]
        disks.append(f"Disk({', '.join([var, *extra])})" if extra else var)
    out.append(f"    disks=[{', '.join(disks)}],")
    if v.nics:
        nics = []
        for nic in v.nics:
            args = [nic.network] if nic.network else [f"bridge={literal(nic.bridge)}"]
            if nic.model != "virtio":
                args.append(f"model={literal(nic.model)}")
            if nic.ip:
                args.append(f"ip={literal(nic.ip)}")
            nics.append(f"NIC({', '.join(args)})")
        out.append(f"    nics=[{', '.join(nics)}],")
    if vm.cloud_init is not None:
        hostname = f"{opts.name}-{vm.cloud_init.hostname or vm.name}"
        out.append(f"    cloud_init=SOURCE.cloud_init({literal(vm.name)}, hostname={literal(hostname)}, "
                   f"instance_id={literal('iid-' + v.name)}),")  # fmt: skip
    if vm.graphics is not None:
        if _secret_graphics(vm):
            out.append(f"    graphics=SOURCE.vm({literal(vm.name)}).graphics,")
        else:
            out.append(f"    graphics=Graphics({literal(vm.graphics.type)}, listen={literal(vm.graphics.listen)}),")
    if not vm.serial:
        out.append("    serial=False,")
    if vm.autostart:
        out.append("    autostart=True,")
    state = opts.state or vm.state
    if state != "running":
        out.append(f"    state={literal(state)},")
    if vm.description:
        out.append(f"    description={literal(vm.description)},")
    if vm.shutdown_timeout != 60.0:
        out.append(f"    shutdown_timeout={literal(vm.shutdown_timeout)},")
    for name in ("kernel", "initrd"):
        vol = getattr(v, name)
        if vol is not None:
            var = identifier(f"{vm.name}_{name}", taken)
            head.append(_vol_code(vol, f"{var} = Volume"))
            out.append(f"    {name}={var},")
    if vm.cmdline:
        out.append(f"    cmdline={literal(vm.cmdline)},")
    if vm.console_log is False:
        out.append("    console_log=False,")
    out.append(")")
    return head + out


# -- disks -----------------------------------------------------------------------------------
@dataclass
class _Frozen:
    path: str
    format: str
    capacity: int


def _frozen_states(engine: Engine, observation: Observation, d: _Design, opts: CloneOptions,
                   say: Progress) -> dict[tuple[str, str], _Frozen]:  # fmt: skip
    """(source VM name, source volume key) -> the file holding the state to clone."""
    import libvirt

    from virtplan.apply.layers import freeze, label_for
    from virtplan.apply.snapshots import SnapshotError, address_of
    from virtplan.hosts.chains import writable_disks

    out: dict[tuple[str, str], _Frozen] = {}
    src = engine.stack
    by_host: dict[str, list[_VM]] = {}
    for v in d.vms:
        assert v.source.host is not None
        by_host.setdefault(v.source.host.name, []).append(v)
    for host_name, vms in by_host.items():
        conn = engine.connection(host_name)
        uri = src.host(host_name).uri
        if opts.from_snapshot:
            for v in vms:
                record = engine.store.get(uri, address_of(host_name, v.source.name, opts.from_snapshot))
                if record is None:
                    raise SnapshotError(f"VM {v.source.name!r} has no snapshot {opts.from_snapshot!r} "
                                        "(see `virtplan snapshot list`)")  # fmt: skip
                if record.get("mode") != "disk":
                    raise SnapshotError(f"snapshot {opts.from_snapshot!r} of {v.source.name!r} is a memory snapshot; "
                                        "clones start from disk-only snapshots")  # fmt: skip
                dom = conn.lookupByName(v.source.name)
                disks = {x.target: x for x in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))}
                for target, path in (record.get("disks") or {}).items():
                    info = disks.get(target)
                    if info is None or info.volume is None:
                        continue
                    fmt = (record.get("formats") or {}).get(target, "qcow2")
                    out[(v.source.name, info.volume)] = _Frozen(path, fmt, _capacity(conn, path))
            continue
        doms = [(v, conn.lookupByName(v.source.name)) for v in vms]
        need_freeze = [(v, dom) for v, dom in doms if v.disks and (not opts.full or dom.isActive())]
        paused = []
        try:
            if len(need_freeze) > 1:  # one instant for the whole environment
                for _, dom in need_freeze:
                    if dom.isActive() and dom.info()[0] == 1:
                        dom.suspend()
                        paused.append(dom)
            label = label_for(f"clone-{opts.name}")

            def one(
                item: tuple[_VM, Any], conn: Any = conn, uri: str = uri, host_name: str = host_name, label: str = label
            ) -> None:
                v, dom = item
                result = freeze(conn, dom, engine.store, uri, host_name, label, record={"clone": opts.name})
                for fd in result.disks.values():
                    out[(v.source.name, fd.volume)] = _Frozen(fd.path, fd.format, fd.capacity)

            with ThreadPoolExecutor(max_workers=4) as workers:  # a few VMs at once: qemu-img runs overlap
                list(workers.map(one, need_freeze))
        finally:
            for dom in paused:
                dom.resume()
        if need_freeze:
            say(f"froze the disks of {len(need_freeze)} VM(s) on {host_name}")
        for v, dom in doms:  # stopped VMs copied in full: their current files, nothing writes them
            if any(vv is v for vv, _ in need_freeze):
                continue
            for info in writable_disks(conn, dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)):
                if info.volume is not None:
                    out[(v.source.name, info.volume)] = _Frozen(info.top, info.format, _capacity(conn, info.top))
    return out


def _capacity(conn: Any, path: str) -> int:
    return int(conn.storageVolLookupByPath(path).info()[1])


def _fill_disks(engine: Engine, d: _Design, frozen: dict[tuple[str, str], _Frozen], opts: CloneOptions,
                images: Path, say: Progress) -> str:  # fmt: skip
    """Turn the placeholder volumes into overlays, copies or uploads; returns the mode."""
    mode = "full" if opts.full else "linked"
    for v in d.vms:
        assert v.source.host is not None
        same_host = v.host == v.source.host.name
        for disk in v.disks:
            state = frozen.get((v.source.name, disk.source_volume))
            if state is None:
                raise CloneError(f"no frozen state found for disk {disk.source_volume} of {v.source.address}")
            vol = disk.volume
            vol.size = state.capacity
            if same_host and not opts.full:
                vol.format, vol.backing, vol.backing_format = "qcow2", state.path, state.format
            elif same_host:
                vol.copy_of = state.path
            else:
                vol.format = "qcow2"
                vol.source = str(_download_flat(engine.connection(v.source.host.name), state.path, images, vol.name))
                say(f"copied {disk.source_volume} to this machine for {v.host}")
                mode = "full" if opts.full else "linked, full copies across hosts"
        for name in ("kernel", "initrd"):
            src_vol = getattr(v.source, name, None)
            vol = getattr(v, name)
            if src_vol is None or vol is None:
                continue
            conn = engine.connection(v.source.host.name)
            key = f"{src_vol.pool.name}/{src_vol.name}"
            pool, _, vname = key.partition("/")
            src_obj = conn.storagePoolLookupByName(pool).storageVolLookupByName(vname)
            vol.size = int(src_obj.info()[1])
            if same_host:
                vol.copy_of = src_obj.path()
            else:
                vol.source = str(_download_flat(conn, src_obj.path(), images, vol.name, flatten=False))
    return mode


def _download_flat(conn: Any, path: str, images: Path, name: str, flatten: bool = True) -> Path:
    """Stream `path` and its backing chain from the host; flatten them into one local image."""
    import xml.etree.ElementTree as ET

    images.mkdir(parents=True, exist_ok=True)
    out = images / name
    with tempfile.TemporaryDirectory(dir=images) as tmp:
        chain: list[tuple[Path, str]] = []
        current: str | None = path
        while current:
            vol = conn.storageVolLookupByPath(current)
            root = ET.fromstring(vol.XMLDesc(0))
            fmt_el = root.find("target/format")
            fmt = fmt_el.get("type", "raw") if fmt_el is not None else "raw"
            local = Path(tmp) / f"layer{len(chain)}"
            _download(conn, vol, local)
            chain.append((local, fmt))
            current = root.findtext("backingStore/path") if flatten else None
        for (child, _), (parent, parent_fmt) in itertools.pairwise(chain):
            subprocess.run(["qemu-img", "rebase", "-u", "-b", str(parent), "-F", parent_fmt, str(child)],
                           check=True, capture_output=True)  # fmt: skip
        if not flatten:
            os.replace(chain[0][0], out)
            return out
        subprocess.run(["qemu-img", "convert", "-f", chain[0][1], "-O", "qcow2", str(chain[0][0]), str(out)],
                       check=True, capture_output=True)  # fmt: skip
    return out


def _download(conn: Any, vol: Any, local: Path) -> None:
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    with local.open("wb") as f:
        stream.recvAll(lambda _s, data, fh: fh.write(data), f)
    stream.finish()


# -- the command -----------------------------------------------------------------------------
def deployed_check(engine: Engine, observation: Observation) -> None:
    from virtplan.plan.ownership import owner_stack

    missing = []
    for vm in engine.stack.vms:
        assert vm.host is not None
        host = observation.hosts[vm.host.name]
        obj = host.get("vm", vm.name)
        if obj is None or owner_stack(obj, vm.address, host.uri, engine.store, engine.stack.key) != engine.stack.key:
            missing.append(vm.address)
    if missing:
        raise CloneError(f"stack {engine.stack.name!r} is not deployed ({', '.join(missing)} missing or not its "
                         "own); run `virtplan apply` on it first")  # fmt: skip
    if not engine.stack.vms:
        raise CloneError(f"stack {engine.stack.name!r} declares no VMs; there is nothing to clone")


def clone(
    source: str | os.PathLike[str],
    opts: CloneOptions,
    host_uris: dict[str, str] | None = None,
    apply: bool = True,
    say: Progress | None = None,
) -> CloneResult:
    """Clone the deployed stack at `source`; write the clone's program and apply it."""
    from virtplan.engine import Engine
    from virtplan.hosts.cache import cache_dir
    from virtplan.model import load_stack

    say = say or (lambda _m: None)
    started = time.perf_counter()
    src = load_stack(source, host_uris)
    assert src.path is not None
    out = opts.out or src.path.parent / f"{opts.name}.py"
    if out.exists():
        raise CloneError(f"{out} already exists; pick another --name (or destroy that stack and remove the file)")
    with Engine(src) as engine, engine.locked():  # freezing changes the source's domains
        observation = engine.observe()
        deployed_check(engine, observation)
        d = design(src, observation, opts)
        uris = {h.name: h.uri for h in src.hosts}
        made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _dry_run(src, d, opts, uris, out, made)  # invalid clones fail here, before any freezing
        frozen = _frozen_states(engine, observation, d, opts, say)
        images = cache_dir() / "clone-images" / opts.name
        mode = _fill_disks(engine, d, frozen, opts, images, say)
    text = program(src, d, opts, uris, out, mode, made)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    say(f"wrote {out}")
    result = CloneResult(
        opts.name, out, {v.source.name: v.name for v in d.vms},
        {n.source.split(" ")[0]: (n.name, n.cidr) for n in d.nets},
        {f"{vm}/{volume}": f.path for (vm, volume), f in frozen.items()},
        mode,
    )  # fmt: skip
    if apply:
        try:
            apply_clone(out, say)
        except VirtplanError as exc:
            raise CloneError(f"{exc}\nThe clone's program is {out}: `virtplan apply {out}` completes the clone, "
                             f"`virtplan destroy {out}` removes what was made") from exc  # fmt: skip
    result.seconds = time.perf_counter() - started
    return result


def _dry_run(src: Stack, d: _Design, opts: CloneOptions, uris: dict[str, str], out: Path, made: str) -> None:
    """Write the program with stand-in disks to a scratch file and validate it."""
    from virtplan.model import load_stack

    volumes = [disk.volume for v in d.vms for disk in v.disks]
    volumes += [x for v in d.vms for x in (v.kernel, v.initrd) if x is not None]
    saved = [(vol, dataclasses.replace(vol)) for vol in volumes]
    for vol in volumes:
        vol.size, vol.backing, vol.format = 1024**3, "/dev/null", "qcow2"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            scratch = Path(tmp) / out.name
            scratch.write_text(program(src, d, opts, uris, scratch, "linked", made))
            load_stack(scratch)
    finally:
        for vol, copy in saved:
            vol.size, vol.backing, vol.format = copy.size, copy.backing, copy.format


def apply_clone(stack_file: Path, say: Progress) -> None:
    """Plan and apply the clone's stack (creates only)."""
    from virtplan.engine import Engine
    from virtplan.model import load_stack
    from virtplan.plan.planner import Action

    with Engine(load_stack(stack_file)) as engine, engine.locked():
        plan, observation = engine.plan()
        odd = [c for c in plan.changes if c.action != Action.CREATE]
        if odd:
            raise CloneError("the clone's plan is not only creations; nothing applied:\n"
                             + "\n".join(f"  - {c.action.value} {c.address}: {c.reason}" for c in odd))  # fmt: skip
        say(f"applying {len(plan.changes)} creation(s)")
        engine.apply(plan, observation)
