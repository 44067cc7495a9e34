"""Whole-stack validation: every problem, each naming its resource and field.

Runs before the first libvirt call, so an invalid stack changes nothing. Validation also
settles the one thing the model leaves open: a resource without a host belongs to the
stack's only host.
"""

from __future__ import annotations

import graphlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from virtplan.errors import FieldError, ValidationError
from virtplan.model.resources import (
    DISK_BUSES,
    DOMAIN_TYPES,
    FIRMWARES,
    GRAPHICS_TYPES,
    NETWORK_MODES,
    NIC_MODELS,
    POWER_STATES,
    VM,
    VOLUME_FORMATS,
    Host,
    Network,
    Pool,
    Resource,
    Volume,
)
from virtplan.model.stack import Stack
from virtplan.units import parse_size

MAX_NAME = 64
VNC_PASSWORD_MAX = 8  # the VNC protocol's limit, enforced by libvirt
_BAD_NAME_CHARS = re.compile(r"[/\\\s\x00-\x1f\x7f'\"<>&]")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_POOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, resource: Resource | str, field: str, message: str) -> None:
        address = resource if isinstance(resource, str) else resource.address
        self.items.append(FieldError(address, field, message))

    def check(self, resource: Resource, field: str, fn: Callable[[], object]) -> object | None:
        """Run fn; a ValueError becomes a field error and the result None."""
        try:
            return fn()
        except ValueError as exc:
            self.add(resource, field, str(exc))
            return None


def validate(stack: Stack) -> None:
    """Raise ValidationError listing every problem; return quietly if the stack is sound."""
    errors = _Errors()
    _assign_hosts(stack, errors)
    for resource in stack.resources:
        _check_name(resource, errors)
    _check_unique_names(stack, errors)
    for host in stack.hosts:
        _check_host(host, errors)
    _check_networks(stack, errors)
    for pool in stack.pools:
        _check_pool(pool, errors)
    for volume in stack.volumes:
        _check_volume(volume, errors)
    _check_vms(stack, errors)
    _check_references(stack, errors)
    _check_cycles(stack, errors)
    _check_snapshots(stack, errors)
    if errors.items:
        raise ValidationError(errors.items)


def _assign_hosts(stack: Stack, errors: _Errors) -> None:
    hosts = stack.hosts
    for resource in stack.managed():
        if isinstance(resource, Volume):
            continue
        if resource.host is None:
            if len(hosts) == 1:
                resource.host = hosts[0]
            else:
                names = ", ".join(h.name for h in hosts)
                errors.add(resource, "host", f"the stack has several hosts ({names}); say which with host=")
        elif resource.host not in hosts:
            errors.add(resource, "host", f"host {resource.host.name!r} is not declared in this stack")


def _check_name(resource: Resource, errors: _Errors) -> None:
    name = resource.name
    if not isinstance(name, str) or not name:
        errors.add(resource, "name", "must be a non-empty string")
    elif len(name) > MAX_NAME:
        errors.add(resource, "name", f"is {len(name)} characters long; use at most {MAX_NAME}")
    elif _BAD_NAME_CHARS.search(name):
        bad = _BAD_NAME_CHARS.search(name).group()  # type: ignore[union-attr]
        errors.add(resource, "name", f"{name!r} contains {bad!r}; use letters, digits, '.', '-', '_'")
    elif name[0] in ".-":
        errors.add(resource, "name", f"{name!r} must not start with {name[0]!r}")


def _check_unique_names(stack: Stack, errors: _Errors) -> None:
    seen: dict[str, Resource] = {}
    for resource in stack.resources:
        address = resource.address
        if address in seen:
            errors.add(resource, "name", f"two {resource.kind}s are named {resource.key!r} on one host")
        seen[address] = resource


def _check_host(host: Host, errors: _Errors) -> None:
    if not isinstance(host.uri, str) or "://" not in host.uri:
        errors.add(host, "uri", f"{host.uri!r} is not a libvirt URI (for example 'qemu:///system')")
    if host.domain_type is not None and host.domain_type not in DOMAIN_TYPES:
        errors.add(host, "domain_type", f"{host.domain_type!r} is not one of {', '.join(DOMAIN_TYPES)}")
    if not isinstance(host.workers, int) or host.workers < 1:
        errors.add(host, "workers", "must be a positive integer")
    if not isinstance(host.records_pool, str) or not _POOL_NAME.match(host.records_pool):
        errors.add(host, "records_pool", f"{host.records_pool!r} is not a pool name (letters, digits, '.', '-', '_')")
    if not isinstance(host.records_path, str) or not host.records_path.startswith("/"):
        errors.add(host, "records_path", f"{host.records_path!r} must be an absolute directory path on the host")


def _check_networks(stack: Stack, errors: _Errors) -> None:
    by_host: dict[str, list[tuple[Network, ipaddress.IPv4Network]]] = defaultdict(list)
    bridges: dict[tuple[str, str], Network] = {}
    for net in stack.networks:
        if net.mode not in NETWORK_MODES:
            errors.add(net, "mode", f"{net.mode!r} is not one of {', '.join(NETWORK_MODES)}")
            continue
        if net.mode == "bridge":
            if not net.bridge:
                errors.add(net, "bridge", "mode 'bridge' needs the name of an existing host bridge")
            if net.cidr:
                errors.add(net, "cidr", "a 'bridge' network has no addresses of its own; drop cidr")
        elif net.mode in ("nat", "route") and not net.cidr:
            errors.add(net, "cidr", f"mode {net.mode!r} needs an IPv4 subnet such as '10.10.0.0/24'")
        if net.bridge is not None and not _BRIDGE.match(net.bridge):
            errors.add(net, "bridge", f"{net.bridge!r} is not a valid interface name (1-15 characters)")
        if net.host is not None and net.mode != "bridge":
            key = (net.host.name, net.bridge_name)
            if key in bridges:
                errors.add(net, "bridge", f"bridge {net.bridge_name!r} is also used by {bridges[key].address}")
            bridges[key] = net
        if net.cidr:
            _check_subnet(net, errors, by_host)
    for nets in by_host.values():
        for i, (a, net_a) in enumerate(nets):
            for b, net_b in nets[i + 1 :]:
                if net_a.overlaps(net_b):
                    errors.add(b, "cidr", f"{b.cidr} overlaps {a.cidr} of {a.address} on the same host")


def _check_subnet(
    net: Network,
    errors: _Errors,
    by_host: dict[str, list[tuple[Network, ipaddress.IPv4Network]]],
) -> None:
    try:
        subnet = ipaddress.IPv4Network(net.cidr, strict=True)
    except ValueError as exc:
        errors.add(net, "cidr", f"{net.cidr!r} is not an IPv4 subnet ({exc}); write e.g. '10.10.0.0/24'")
        return
    if subnet.prefixlen > 29:  # keeps range_ips' arithmetic inside the subnet
        errors.add(net, "cidr", f"{net.cidr} is too small; use a /29 or larger")
        return
    if net.host is not None:
        by_host[net.host.name].append((net, subnet))
    gateway = errors.check(net, "gateway", lambda: net.gateway_ip)
    if isinstance(gateway, ipaddress.IPv4Address) and not _is_host_ip(gateway, subnet):
        errors.add(net, "gateway", f"{gateway} is not a usable address in {subnet}")
    if not net.dhcp:
        if net.dhcp_range:
            errors.add(net, "dhcp_range", "is set but dhcp=False; drop one of them")
        return
    rng = errors.check(net, "dhcp_range", lambda: net.range_ips)
    if isinstance(rng, tuple):
        start, end = rng
        if not (_is_host_ip(start, subnet) and _is_host_ip(end, subnet)):
            errors.add(net, "dhcp_range", f"{start}-{end} is not inside {subnet}")
        elif start > end:
            errors.add(net, "dhcp_range", f"start {start} is after end {end}")
        elif isinstance(gateway, ipaddress.IPv4Address) and start <= gateway <= end:
            errors.add(net, "dhcp_range", f"{start}-{end} contains the gateway {gateway}")


def _is_host_ip(ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network) -> bool:
    return ip in subnet and ip not in (subnet.network_address, subnet.broadcast_address)


def _check_pool(pool: Pool, errors: _Errors) -> None:
    if pool.type != "dir":
        errors.add(pool, "type", f"pool type {pool.type!r} is not supported yet; only 'dir' pools are")
    if not pool.path or not str(pool.path).startswith("/"):
        errors.add(pool, "path", f"{pool.path!r} must be an absolute directory path on the host")


def _check_volume(vol: Volume, errors: _Errors) -> None:
    if vol.pool is None or not isinstance(vol.pool, Pool):
        errors.add(vol, "pool", "every volume needs pool=<a Pool of this stack>")
        return
    if vol.format not in VOLUME_FORMATS:
        errors.add(vol, "format", f"{vol.format!r} is not one of {', '.join(VOLUME_FORMATS)}")
    if vol.backing is not None and vol.source is not None:
        errors.add(vol, "source", "a volume is either an overlay (backing=) or an image (source=), not both")
    if vol.backing is not None and vol.format != "qcow2":
        errors.add(vol, "format", "a copy-on-write overlay (backing=) must be qcow2")
    _check_host_image_refs(vol, errors)
    from virtplan.model.images import checksum_problems, is_url, url_source_problems

    for field, message in url_source_problems(vol) if is_url(vol.source) else checksum_problems(vol):
        errors.add(vol, field, message)  # a URL is not fetched here: validation stays offline
    if vol.source is not None and not is_url(vol.source) and not Path(vol.source).is_file():
        errors.add(vol, "source", f"image file {vol.source} does not exist")
        return
    if vol.source is not None and not is_url(vol.source) and vol.format in VOLUME_FORMATS:
        from virtplan.model.images import image_format

        actual = image_format(Path(vol.source))
        if actual != vol.format:
            errors.add(vol, "format", f"is {vol.format!r} but {vol.source} is a {actual} image; say format={actual!r}")
    if vol.size is not None:
        size = errors.check(vol, "size", lambda: parse_size(vol.size))  # type: ignore[arg-type]
        if size == 0:
            errors.add(vol, "size", "must be greater than zero")
    elif vol.backing is None and vol.source is None:
        errors.add(vol, "size", "is required for a blank volume (for example size='10GiB')")
    if vol.backing is not None and isinstance(vol.backing, Volume) and vol.size is not None:
        try:
            if vol.backing.size_bytes > parse_size(vol.size):
                errors.add(
                    vol, "size",
                    f"{vol.size} is smaller than its backing volume {vol.backing.address} "
                    f"({vol.backing.size}); an overlay must be at least as big",
                )  # fmt: skip
        except (ValueError, RecursionError):
            pass  # reported on the backing volume itself, or as a cycle


def _check_host_image_refs(vol: Volume, errors: _Errors) -> None:
    """`backing` given as a path, and `copy_of`: images on the host the stack does not manage."""
    if vol.backing is not None and not isinstance(vol.backing, (Volume, str)):
        errors.add(vol, "backing", "must be a Volume of this stack or the absolute path of an image on the host")
    for field in ("backing", "copy_of"):
        value = getattr(vol, field)
        if not isinstance(value, str):
            continue
        if not value.startswith("/"):
            errors.add(vol, field, f"{value!r} must be an absolute path of an image on the host")
        if vol.size is None and field == "backing":  # copy_of without size: reported below
            errors.add(vol, "size", "is required with backing= an image path (virtplan cannot read its size)")
    if vol.backing_format is not None and vol.backing_format not in VOLUME_FORMATS:
        errors.add(vol, "backing_format", f"{vol.backing_format!r} is not one of {', '.join(VOLUME_FORMATS)}")
    if vol.backing_format is not None and not isinstance(vol.backing, str):
        errors.add(vol, "backing_format", "only applies when backing= is an image path; drop it")
    if vol.copy_of is not None and (vol.backing is not None or vol.source is not None):
        errors.add(vol, "copy_of", "a volume is a copy (copy_of=), an overlay (backing=) or an image (source=): one")


def _check_snapshots(stack: Stack, errors: _Errors) -> None:
    from virtplan.model.snapshot import Snapshot, check_snapshot

    for snap in stack.of_kind(Snapshot):
        check_snapshot(snap, errors.add)


def _check_vms(stack: Stack, errors: _Errors) -> None:
    macs: dict[str, str] = {}
    ips: dict[tuple[str, str], str] = {}
    attached: dict[str, str] = {}
    for vm in stack.vms:
        _check_vm_scalars(vm, errors)
        boots: set[int] = set()
        for i, disk in enumerate(vm.disks):
            field = f"disks[{i}]"
            if not isinstance(disk.volume, Volume):
                errors.add(vm, field, "must be a Volume of this stack")
                continue
            if disk.bus not in DISK_BUSES:
                errors.add(vm, f"{field}.bus", f"{disk.bus!r} is not one of {', '.join(DISK_BUSES)}")
            if disk.boot is not None:
                if disk.boot in boots:
                    errors.add(vm, f"{field}.boot", f"boot order {disk.boot} is used twice")
                boots.add(disk.boot)
            if disk.volume.address in attached:
                errors.add(vm, field, f"{disk.volume.address} is already a disk of {attached[disk.volume.address]}")
            attached[disk.volume.address] = vm.address
        for i, nic in enumerate(vm.nics):
            _check_nic(vm, i, nic, errors, macs, ips)
        if vm.cloud_init is not None and vm.seed_pool is None:
            errors.add(vm, "cloud_init", "needs at least one disk: the seed volume goes into its pool")
        _check_direct_boot(vm, errors)


def _check_direct_boot(vm: VM, errors: _Errors) -> None:
    for field in ("kernel", "initrd"):
        value = getattr(vm, field)
        if value is not None and not isinstance(value, Volume):
            hint = f"for example Volume({field!r}, pool=..., source=...)"
            errors.add(vm, field, f"must be a Volume of this stack ({hint})")
    if vm.initrd is not None and vm.kernel is None:
        errors.add(vm, "initrd", "an initrd needs kernel= as well")
    if vm.cmdline is not None and (vm.kernel is None or not isinstance(vm.cmdline, str)):
        errors.add(vm, "cmdline", "a kernel command line needs kernel= (and must be a string)")


def _check_vm_scalars(vm: VM, errors: _Errors) -> None:
    for field, value in (("vcpus", vm.vcpus), ("max_vcpus", vm.max_vcpus_count)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.add(vm, field, f"must be a whole number of at least 1, got {value!r}")
    if isinstance(vm.vcpus, int) and isinstance(vm.max_vcpus_count, int) and vm.vcpus > vm.max_vcpus_count:
        errors.add(vm, "max_vcpus", f"{vm.max_vcpus} is less than vcpus={vm.vcpus}")
    memory = errors.check(vm, "memory", lambda: vm.memory_bytes)
    maximum = errors.check(vm, "max_memory", lambda: vm.max_memory_bytes)
    if memory is not None and memory < 1024 * 1024:  # type: ignore[operator]
        errors.add(vm, "memory", f"{vm.memory!r} is too small; give at least 1MiB (for example '512MiB')")
    if isinstance(memory, int) and isinstance(maximum, int) and memory > maximum:
        errors.add(vm, "max_memory", f"{vm.max_memory} is less than memory={vm.memory}")
    if vm.firmware not in FIRMWARES:
        errors.add(vm, "firmware", f"{vm.firmware!r} is not one of {', '.join(FIRMWARES)}")
    if vm.state not in POWER_STATES:
        errors.add(vm, "state", f"{vm.state!r} is not one of {', '.join(POWER_STATES)}")
    if vm.graphics is not None and vm.graphics.type not in GRAPHICS_TYPES:
        errors.add(vm, "graphics.type", f"{vm.graphics.type!r} is not one of none, {', '.join(GRAPHICS_TYPES)}")
    password = vm.graphics.password if vm.graphics is not None else None
    if vm.graphics is not None and vm.graphics.type == "vnc" and password is not None:
        length = len(password.reveal())  # type: ignore[union-attr]
        if length > VNC_PASSWORD_MAX:
            errors.add(vm, "graphics.password", f"is {length} characters long; VNC allows at most {VNC_PASSWORD_MAX}")
    if not isinstance(vm.shutdown_timeout, (int, float)) or vm.shutdown_timeout < 0:
        errors.add(vm, "shutdown_timeout", "must be a number of seconds, 0 or more")
    if not isinstance(vm.description, str):
        errors.add(vm, "description", "must be a string")


def _check_nic(
    vm: VM,
    i: int,
    nic: object,
    errors: _Errors,
    macs: dict[str, str],
    ips: dict[tuple[str, str], str],
) -> None:
    from virtplan.model.resources import NIC

    field = f"nics[{i}]"
    if not isinstance(nic, NIC):
        errors.add(vm, field, "must be a NIC or a Network of this stack")
        return
    if (nic.network is None) == (nic.bridge is None):
        errors.add(vm, field, "give exactly one of network= (a Network) or bridge= (a host bridge name)")
        return
    if nic.network is not None and not isinstance(nic.network, Network):
        errors.add(vm, f"{field}.network", "must be a Network of this stack")
        return
    if nic.model not in NIC_MODELS:
        errors.add(vm, f"{field}.model", f"{nic.model!r} is not one of {', '.join(NIC_MODELS)}")
    if nic.mac is not None:
        mac = nic.mac.lower()
        if not _MAC.match(mac):
            errors.add(vm, f"{field}.mac", f"{nic.mac!r} is not a MAC address like 52:54:00:12:34:56")
        elif mac in macs:
            errors.add(vm, f"{field}.mac", f"{mac} is also used by {macs[mac]}")
        else:
            macs[mac] = f"{vm.address} {field}"
    if nic.ip is None:
        return
    net = nic.network
    if net is None or not net.cidr:
        errors.add(vm, f"{field}.ip", "a fixed IP needs a NIC on a virtplan Network with a cidr")
        return
    try:
        ip = ipaddress.IPv4Address(nic.ip)
        subnet = net.ip_network
    except ValueError as exc:
        errors.add(vm, f"{field}.ip", f"{nic.ip!r} is not an IPv4 address ({exc})")
        return
    if not _is_host_ip(ip, subnet):
        errors.add(vm, f"{field}.ip", f"{ip} is outside {net.address} ({subnet})")
        return
    if ip == net.gateway_ip:
        errors.add(vm, f"{field}.ip", f"{ip} is the gateway of {net.address}")
    if not net.dhcp:
        errors.add(vm, f"{field}.ip", f"{net.address} has dhcp=False; fixed IPs are DHCP reservations")
    key = (net.address, str(ip))
    if key in ips:
        errors.add(vm, f"{field}.ip", f"{ip} is also given to {ips[key]}")
    ips[key] = f"{vm.address} {field}"


def _check_references(stack: Stack, errors: _Errors) -> None:
    declared = set(map(id, stack.resources))
    for resource in stack.managed():
        for dep in resource.dependencies():
            if id(dep) not in declared:
                errors.add(
                    resource,
                    _ref_field(resource, dep),
                    f"refers to {dep.kind} {dep.key!r}, which this stack does not declare",
                )
            elif dep.host is not None and resource.host is not None and dep.host is not resource.host:
                errors.add(
                    resource, _ref_field(resource, dep),
                    f"refers to {dep.address} on host {dep.host.name!r}, but lives on host {resource.host.name!r}",
                )  # fmt: skip


def _ref_field(resource: Resource, dep: Resource) -> str:
    if isinstance(resource, Volume):
        return "pool" if dep is resource.pool else "backing"
    if isinstance(resource, VM):
        for i, disk in enumerate(resource.disks):
            if disk.volume is dep:
                return f"disks[{i}]"
        for i, nic in enumerate(resource.nics):
            if nic.network is dep:
                return f"nics[{i}].network"
        if dep is resource.kernel:
            return "kernel"
        if dep is resource.initrd:
            return "initrd"
    return "reference"


def _check_cycles(stack: Stack, errors: _Errors) -> None:
    graph = {r.address: [d.address for d in r.dependencies()] for r in stack.managed()}
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        errors.add(exc.args[1][0], "dependencies", f"dependency cycle: {cycle}")
