"""The clone's design: names, hosts, networks, pools, disks and NICs, from the source stack.

Pure: reads the source stack and what the hosts have (for subnets in use), changes
nothing. `design` checks the options first; every name it gives is the clone's name
prefixed (`<N>-<name>`), networks are isolated unless `connected`, fixed IPs keep their
place in mapped subnets. Disk volumes are placeholders (`size` 0) until
`virtplan.workflows.clone.disks` knows the frozen files they build on.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.workflows.clone.options import CloneError, CloneOptions, check_options
from virtplan.workflows.clone.subnets import free_subnet, shift
from virtplan.workflows.codegen import identifier

if TYPE_CHECKING:
    from virtplan.engine import Observation
    from virtplan.model import NIC, VM, Network, Stack


@dataclass
class NetworkDesign:
    """A network of the clone; `var` is its variable in the clone's program."""

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
class PoolDesign:
    """A pool of the clone: a new folder beside the source pool's."""

    var: str
    name: str
    host: str
    path: str


@dataclass
class VolumeDesign:
    """A volume of the clone: an overlay on a frozen file (`backing`), a copy made on the
    host (`copy_of`) or an image uploaded from this machine (`source`)."""

    name: str
    pool: str  # pool var
    size: int
    format: str
    backing: str | None = None
    backing_format: str | None = None
    copy_of: str | None = None
    source: str | None = None


@dataclass
class DiskDesign:
    """A disk of a clone VM, and the source volume whose state it takes."""

    volume: VolumeDesign
    bus: str
    boot: int | None
    target: str | None
    source_volume: str  # "pool/name" in the source


@dataclass
class NicDesign:
    """A NIC of a clone VM: on a clone network (`network`: its variable) or a host bridge."""

    network: str | None  # net var
    bridge: str | None
    model: str
    ip: str | None


@dataclass
class VMDesign:
    """A VM of the clone: the source VM's settings under a new name, on clone disks and networks."""

    source: VM
    name: str
    host: str
    disks: list[DiskDesign]
    nics: list[NicDesign]
    kernel: VolumeDesign | None = None
    initrd: VolumeDesign | None = None


@dataclass
class Design:
    """The whole clone: host names, networks, pools and VMs, in program order."""

    hosts: list[str]
    nets: list[NetworkDesign]
    pools: list[PoolDesign]
    vms: list[VMDesign]


def design_clone(src: Stack, observation: Observation, opts: CloneOptions) -> Design:
    """Names, hosts, networks, pools and VMs of the clone; disks are filled in later."""
    check_options(src, opts)
    taken_vars: set[str] = {"SOURCE"}
    host_vars: dict[str, str] = {}

    def target(host: str) -> str:
        return opts.host_map.get(host, host)

    def host_var(host: str) -> str:
        if host not in host_vars:
            host_vars[host] = identifier(host, taken_vars)
        return host_vars[host]

    used = _subnets_in_use(src, observation, opts, target)
    nets: list[NetworkDesign] = []
    net_by_source: dict[int, NetworkDesign] = {}
    for net in src.networks:
        assert net.host is not None
        cnet = _network(net, target(net.host.name), opts, used, host_var, taken_vars)
        nets.append(cnet)
        net_by_source[id(net)] = cnet
    pools: dict[tuple[str, str], PoolDesign] = {}
    bridges: dict[tuple[str, str], NetworkDesign] = {}
    vms: list[VMDesign] = []
    for vm in src.vms:
        assert vm.host is not None
        h = target(vm.host.name)
        host_var(h)
        clone_vm = VMDesign(vm, f"{opts.name}-{vm.name}", h, [], [])
        _disks(clone_vm, opts, pools, taken_vars)
        for nic in vm.nics:
            clone_vm.nics.append(_nic(nic, vm, h, opts, net_by_source, bridges, nets, taken_vars))
        vms.append(clone_vm)
    for n in nets:
        host_var(n.host)
    return Design(list(host_vars), nets, list(pools.values()), vms)


def _subnets_in_use(
    src: Stack, observation: Observation, opts: CloneOptions, target: Callable[[str], str]
) -> dict[str, list[ipaddress.IPv4Network]]:
    """Host name -> subnets on it (and every mapped one), so picked subnets never clash;
    CloneError if a mapped subnet overlaps one already on its host."""
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
    return used


def _disks(clone_vm: VMDesign, opts: CloneOptions, pools: dict[tuple[str, str], PoolDesign], taken: set[str]) -> None:
    """The clone VM's disks and direct-boot files: placeholder volumes in clone pools."""
    vm, h = clone_vm.source, clone_vm.host
    assert vm.host is not None
    for disk in vm.disks:
        vol = disk.volume
        assert vol.pool is not None
        pool = _pool(vol.pool.name, vol.pool.path, h, opts, pools, taken)
        name = f"{opts.name}-{vol.name}"
        if not opts.full and h == vm.host.name:
            name = re.sub(r"\.(raw|img)$", ".qcow2", name)  # an overlay is qcow2
        placeholder = VolumeDesign(name, pool.var, 0, vol.format)
        clone_vm.disks.append(DiskDesign(placeholder, disk.bus, disk.boot, disk.target, vol.key))
    for extra in ("kernel", "initrd"):
        boot_file = getattr(vm, extra, None)
        if boot_file is not None and boot_file.pool is not None:
            pool = _pool(boot_file.pool.name, boot_file.pool.path, h, opts, pools, taken)
            setattr(clone_vm, extra, VolumeDesign(f"{opts.name}-{boot_file.name}", pool.var, 0, boot_file.format))


def _nic(
    nic: NIC,
    vm: VM,
    host: str,
    opts: CloneOptions,
    net_by_source: dict[int, NetworkDesign],
    bridges: dict[tuple[str, str], NetworkDesign],
    nets: list[NetworkDesign],
    taken: set[str],
) -> NicDesign:
    """A clone NIC: on the clone of its network (fixed IP moved), or for a host bridge an
    isolated network of its own (`bridges`, added to `nets`) unless `connected`."""
    if nic.network is not None:
        cnet = net_by_source[id(nic.network)]
        ip = None
        if nic.ip and nic.network.cidr and cnet.cidr:
            ip = shift(nic.ip, nic.network.ip_network, ipaddress.IPv4Network(cnet.cidr), f"{vm.address} ip")
        return NicDesign(cnet.var, None, nic.model, ip)
    if opts.connected:
        return NicDesign(None, nic.bridge, nic.model, None)
    key = (host, nic.bridge or "")  # a host bridge would reach the source's network
    if key not in bridges:
        name = f"{opts.name}-{nic.bridge}"
        bridges[key] = NetworkDesign(identifier(name, taken), name, host, "isolated", None, None, False, None, None,
                                     True, None, f"host bridge {nic.bridge}")  # fmt: skip
        nets.append(bridges[key])
    return NicDesign(bridges[key].var, None, nic.model, None)


def _network(
    net: Network,
    host: str,
    opts: CloneOptions,
    used: dict[str, list[ipaddress.IPv4Network]],
    host_var: Callable[[str], str],
    taken: set[str],
) -> NetworkDesign:
    """The clone of `net` on `host`: isolated unless `connected`, its subnet mapped or
    kept where free or else picked, gateway and DHCP range moved with it."""
    name = f"{opts.name}-{net.name}"
    var = identifier(net.name if net.name.endswith("net") else f"{net.name}_net", taken)
    host_var(host)
    mode = net.mode if opts.connected else "isolated"
    if net.mode == "bridge":
        if opts.connected:
            return NetworkDesign(var, name, host, "bridge", None, None, False, None, None, net.autostart,
                                 net.bridge, f"{net.address} (host bridge {net.bridge})")  # fmt: skip
        return NetworkDesign(var, name, host, "isolated", None, None, False, None, None, net.autostart, None,
                             f"{net.address} (host bridge {net.bridge}, isolated here)")  # fmt: skip
    if not net.cidr:
        return NetworkDesign(
            var, name, host, mode, None, None, net.dhcp, None, net.domain, net.autostart, None, net.address
        )
    old = net.ip_network
    if str(old) in opts.subnet_map:
        new = ipaddress.IPv4Network(opts.subnet_map[str(old)])
    elif not any(old.overlaps(t) for t in used.setdefault(host, [])):
        new = old  # nothing there has it (another host)
    else:
        new = free_subnet(old.prefixlen, used[host], f"{opts.name}/{net.address}")
    used.setdefault(host, []).append(new)
    gateway = shift(net.gateway, old, new, f"{net.address} gateway") if net.gateway else None
    rng = None
    if net.dhcp_range:
        rng = (shift(net.dhcp_range[0], old, new, f"{net.address} dhcp_range"),
               shift(net.dhcp_range[1], old, new, f"{net.address} dhcp_range"))  # fmt: skip
    return NetworkDesign(var, name, host, mode, str(new), gateway, net.dhcp, rng, net.domain, net.autostart, None,
                         f"{net.address} {old}")  # fmt: skip


def _pool(name: str, path: str, host: str, opts: CloneOptions, pools: dict[tuple[str, str], PoolDesign],
          taken: set[str]) -> PoolDesign:  # fmt: skip
    """The clone pool for a source pool on `host` (one per pair), in a folder beside it."""
    key = (host, name)
    if key not in pools:
        folder = Path(path)
        pools[key] = PoolDesign(identifier(f"{name}", taken), f"{opts.name}-{name}", host,
                                str(folder.parent / f"{opts.name}-{folder.name}"))  # fmt: skip
    return pools[key]
