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
from virtplan.model.fields import PLACEHOLDER, escape_controls, got, problems, text_problem
from virtplan.model.images import checksum_problems, image_format, is_url, url_source_problems
from virtplan.model.order import dependency_rounds
from virtplan.model.resources import (
    DISK_BUSES,
    DOMAIN_TYPES,
    FIRMWARES,
    GRAPHICS_TYPES,
    NETWORK_MODES,
    NIC,
    NIC_MODELS,
    POWER_STATES,
    RAW_DOCUMENTS,
    VM,
    VOLUME_FORMATS,
    CloudInit,
    Disk,
    Graphics,
    Host,
    Network,
    Pool,
    Resource,
    Volume,
)
from virtplan.model.secrets import Secret
from virtplan.model.stack import Stack
from virtplan.units import parse_size

MAX_NAME = 64
VNC_PASSWORD_MAX = 8  # the VNC protocol's limit, enforced by libvirt
MAX_VCPUS = 4096  # more than libvirt's QEMU driver accepts for any machine type
MAX_BYTES = 2**50  # 1 PiB: more memory or disk than any host has; libvirt overflows beyond
MAX_TIMEOUT = 24 * 3600.0
MIB = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
_POOL_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_BRIDGE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MACHINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_ARCH = re.compile(r"^[a-z0-9_]{1,32}$")
_DNS_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_PACKAGE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._:~=<>*-]{0,127}$")
_TARGET = re.compile(r"^[a-z]{2,3}[a-z]{1,3}$")
_UNITLESS = re.compile(r"\s*\d+(\.\d+)?\s*")  # a size written as a bare number


class _Errors:
    def __init__(self) -> None:
        self.items: list[FieldError] = []

    def add(self, resource: Resource | str, field: str, message: str) -> None:
        address = resource if isinstance(resource, str) else resource.address
        self.items.append(FieldError(escape_controls(address), field, escape_controls(message)))

    def check(self, resource: Resource, field: str, fn: Callable[[], object]) -> object | None:
        """Run fn; a ValueError becomes a field error and the result None."""
        try:
            return fn()
        except ValueError as exc:
            self.add(resource, field, str(exc))
            return None

    def problems(self, resource: Resource, obj: object, prefix: str = "") -> None:
        """What the constructor of `obj` (the resource or one of its parts) could not take."""
        for field, message in problems(obj):
            self.add(resource, prefix + field, message)


def validate(stack: Stack) -> Stack:
    """Raise ValidationError listing every problem; return the concrete stack if it is
    sound: the stack itself, or for a stack that declares objects on several hosts or
    places VMs, one object per host (`virtplan.model.placement`), checked as a whole."""
    errors = _Errors()
    _assign_hosts(stack, errors)
    stack = _concrete(stack, errors)
    for resource in stack.resources:
        errors.problems(resource, resource)
        _check_name(resource, errors)
    _check_unique_names(stack, errors)
    _check_renames(stack, errors)
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
    return stack


def _concrete(stack: Stack, errors: _Errors) -> Stack:
    """Place the stack's VMs and give each host its own objects; placement problems (a VM
    that fits nowhere, a candidate without capacity) are errors like any other."""
    from virtplan.model import placement

    if not placement.spans_hosts(stack):
        return stack
    layout = placement.check_layout(stack)
    errors.items += layout
    if layout:
        return stack
    concrete, problems = placement.concrete(stack)
    errors.items += problems
    return concrete


def _check_renames(stack: Stack, errors: _Errors) -> None:
    """`renamed_from`: a name like any other, not this resource's own, not another declared
    resource's (that one would be renamed and kept at once), not claimed twice."""
    claimed: dict[tuple[str, str], Resource] = {}
    for r in stack.managed():
        old = getattr(r, "renamed_from", None)
        if old is None:
            continue
        if r.kind not in ("vm", "network", "volume"):
            errors.add(r, "renamed_from", f"a {r.kind} cannot be renamed")
            continue
        if not isinstance(old, str) or not old or len(old) > MAX_NAME or not _NAME.match(old):
            errors.add(r, "renamed_from", f"{old!r} is not a name (a {r.kind}'s old name, e.g. 'web-old')")
            continue
        if old == r.name:
            errors.add(r, "renamed_from", "is its own name; drop renamed_from")
            continue
        old_key = f"{r.key.rsplit('/', 1)[0]}/{old}" if r.kind == "volume" else old
        host = r.host.name if r.host is not None else "?"
        if any(o.kind == r.kind and o.key == old_key and o.host is r.host for o in stack.managed()):
            errors.add(
                r, "renamed_from", f"the stack still declares a {r.kind} named {old!r}; remove it (renaming moves it)"
            )
        elif (host, r.kind + "/" + old_key) in claimed:
            errors.add(
                r, "renamed_from", f"{claimed[(host, r.kind + '/' + old_key)].address} is renamed from {old!r} too"
            )
        else:
            claimed[(host, r.kind + "/" + old_key)] = r


def _assign_hosts(stack: Stack, errors: _Errors) -> None:
    hosts = stack.hosts
    for resource in stack.resources:
        if isinstance(resource, (Host, Volume)) or resource.kind == "snapshot" or resource.replicas is not None:
            continue  # a volume lives on its pool's host, a snapshot on its VM's; replicas: see placement
        if isinstance(resource, VM) and resource.placement is not None:
            continue
        host = resource.host
        if host is None:
            if len(hosts) == 1:
                resource.host = hosts[0]
            else:
                names = ", ".join(h.name for h in hosts)
                errors.add(resource, "host", f"the stack has several hosts ({names}); say which with host=")
        elif not isinstance(host, Host):
            errors.add(resource, "host", f"expected a Host of this stack (host=Host(...)), {got(host)}")
        elif host not in hosts:
            errors.add(resource, "host", f"host {host.name!r} is not declared in this stack")


def _check_name(resource: Resource, errors: _Errors) -> None:
    name = resource.name
    if not isinstance(name, str) or not name:
        errors.add(resource, "name", f"must be a non-empty string, {got(name)}")
    elif len(name) > MAX_NAME:
        errors.add(resource, "name", f"is {len(name)} characters long; use at most {MAX_NAME}")
    elif not _NAME.match(name):
        bad = next(c for c in name if not _NAME.match(c))
        errors.add(resource, "name", f"{name!r} contains {bad!r}; use letters, digits, '.', '-', '_'")
    elif name[0] in ".-":
        errors.add(resource, "name", f"{name!r} must not start with {name[0]!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_bool(resource: Resource, field: str, value: object, errors: _Errors) -> None:
    if not isinstance(value, bool):
        errors.add(resource, field, f"must be True or False, {got(value)}")


def _check_text(
    resource: Resource, field: str, value: object, errors: _Errors, *, optional: bool = True, multiline: bool = True
) -> bool:
    """A free-text field: a string without control characters. True when it is one."""
    if value is None and optional:
        return False
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        errors.add(resource, field, f"must be a string, {got(value)}")
        return False
    problem = text_problem(value, multiline=multiline)
    if problem is not None:
        errors.add(resource, field, problem)
        return False
    return True


def _pending(value: object) -> bool:
    """A value Pulumi fills in later (`virtplan.pulumi.text`): its content is checked then."""
    return isinstance(value, str) and PLACEHOLDER.search(value) is not None


def _check_size(resource: Resource, field: str, value: object, errors: _Errors) -> int | None:
    """A byte size: parsed, at most MAX_BYTES, and a bare number below 1 MiB is an error
    (size=20 means 20 bytes, almost never what was meant)."""
    try:
        size = parse_size(value)  # type: ignore[arg-type]
    except ValueError as exc:
        errors.add(resource, field, str(exc))
        return None
    if size > MAX_BYTES:
        errors.add(resource, field, f"{value!r} is more than any host has (at most 1PiB)")
        return None
    if 0 < size < MIB and (_is_int(value) or (isinstance(value, str) and _UNITLESS.fullmatch(value))):
        number = str(value).strip()
        errors.add(resource, field, f"{value!r} has no unit, so it means {size} bytes; write {number + 'GiB'!r} "
                                    f"or {number + 'MiB'!r} (or {number + 'B'!r} if you mean bytes)")  # fmt: skip
        return None
    return size


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
    else:
        _check_text(host, "uri", host.uri, errors, multiline=False)
    if host.domain_type is not None and host.domain_type not in DOMAIN_TYPES:
        errors.add(host, "domain_type", f"{host.domain_type!r} is not one of {', '.join(DOMAIN_TYPES)}")
    if host.workers is not None and (not _is_int(host.workers) or not 1 <= host.workers <= 256):
        errors.add(host, "workers", f"must be a whole number from 1 to 256, or None to size it from the host, "
                                    f"{got(host.workers)}")  # fmt: skip
    if not isinstance(host.records_pool, str) or not _POOL_NAME.match(host.records_pool):
        errors.add(host, "records_pool", f"{host.records_pool!r} is not a pool name (letters, digits, '.', '-', '_')")
    if not isinstance(host.records_path, str) or not host.records_path.startswith("/"):
        errors.add(host, "records_path", f"{host.records_path!r} must be an absolute directory path on the host")
    else:
        _check_text(host, "records_path", host.records_path, errors, multiline=False)


def _check_existing(net: Network, errors: _Errors) -> None:
    """A network the stack refers to by name only: no field that would change it."""
    defaults = {"mode": "nat", "cidr": None, "gateway": None, "dhcp": True, "dhcp_range": None, "domain": None,
                "autostart": True, "bridge": None}  # fmt: skip
    for field, default in defaults.items():
        if getattr(net, field) != default:
            errors.add(net, field, "is set, but existing=True: virtplan only reads a network it does not manage; "
                                   f"drop {field}= (or drop existing=True to manage the network)")  # fmt: skip


def _check_networks(stack: Stack, errors: _Errors) -> None:
    by_host: dict[str, list[tuple[Network, ipaddress.IPv4Network]]] = defaultdict(list)
    bridges: dict[tuple[str, str], Network] = {}
    for net in stack.networks:
        _check_bool(net, "existing", net.existing, errors)
        if net.existing is True:
            _check_existing(net, errors)
            continue
        _check_bool(net, "dhcp", net.dhcp, errors)
        _check_bool(net, "autostart", net.autostart, errors)
        if net.domain is not None:
            _check_domain(net, errors)
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
        if net.bridge is not None and (not isinstance(net.bridge, str) or not _BRIDGE.match(net.bridge)):
            errors.add(
                net, "bridge", f"{net.bridge!r} is not a valid interface name (1-15 letters, digits, '.', '-', '_')"
            )
            continue
        if isinstance(net.host, Host) and isinstance(net.name, str) and net.mode != "bridge":
            key = (net.host.name, net.bridge_name)
            if key in bridges:
                errors.add(net, "bridge", f"bridge {net.bridge_name!r} is also used by {bridges[key].address}")
            bridges[key] = net
        if net.cidr:
            _check_subnet(net, errors, by_host)
        elif net.gateway is not None or net.dhcp_range is not None:
            field = "gateway" if net.gateway is not None else "dhcp_range"
            errors.add(net, field, "needs cidr= (the network's subnet)")
    for nets in by_host.values():
        for i, (a, net_a) in enumerate(nets):
            for b, net_b in nets[i + 1 :]:
                if net_a.overlaps(net_b):
                    errors.add(b, "cidr", f"{b.cidr} overlaps {a.cidr} of {a.address} on the same host")


def _check_domain(net: Network, errors: _Errors) -> None:
    """A DNS domain: dot-separated labels of letters, digits and '-', at most 253 characters."""
    domain = net.domain
    if not isinstance(domain, str):
        errors.add(net, "domain", f"must be a DNS domain such as 'lab.test', {got(domain)}")
        return
    labels = domain.rstrip(".").split(".")
    if len(domain) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        errors.add(net, "domain", f"{domain!r} is not a DNS domain: use labels of 1-63 letters, digits and '-' "
                                  "separated by '.', at most 253 characters (for example 'lab.test')")  # fmt: skip


def _check_subnet(
    net: Network,
    errors: _Errors,
    by_host: dict[str, list[tuple[Network, ipaddress.IPv4Network]]],
) -> None:
    if not isinstance(net.cidr, str):
        errors.add(net, "cidr", f"must be an IPv4 subnet such as '10.10.0.0/24', {got(net.cidr)}")
        return
    if net.gateway is not None and not isinstance(net.gateway, str):
        errors.add(net, "gateway", f"must be an IPv4 address such as '10.10.0.1', {got(net.gateway)}")
        return
    rng_ok = isinstance(net.dhcp_range, (tuple, list)) and len(net.dhcp_range) == 2
    if net.dhcp_range is not None and not (rng_ok and all(isinstance(a, str) for a in net.dhcp_range)):
        errors.add(
            net, "dhcp_range", f"must be two IPv4 addresses, ('10.10.0.100', '10.10.0.199'), {got(net.dhcp_range)}"
        )
        return
    try:
        subnet = ipaddress.IPv4Network(net.cidr, strict=True)
    except ValueError as exc:
        errors.add(net, "cidr", f"{net.cidr!r} is not an IPv4 subnet ({exc}); write e.g. '10.10.0.0/24'")
        return
    if subnet.prefixlen > 29:  # keeps range_ips' arithmetic inside the subnet
        errors.add(net, "cidr", f"{net.cidr} is too small; use a /29 or larger")
        return
    if isinstance(net.host, Host):
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
    if not isinstance(pool.path, str) or not pool.path.startswith("/"):
        errors.add(pool, "path", f"{pool.path!r} must be an absolute directory path on the host")
    else:
        _check_text(pool, "path", pool.path, errors, multiline=False)
    _check_bool(pool, "autostart", pool.autostart, errors)


def _check_volume(vol: Volume, errors: _Errors) -> None:
    if vol.pool is None or not isinstance(vol.pool, Pool):
        errors.add(vol, "pool", f"every volume needs pool=<a Pool of this stack>, {got(vol.pool)}")
        return
    if vol.format not in VOLUME_FORMATS:
        errors.add(vol, "format", f"{vol.format!r} is not one of {', '.join(VOLUME_FORMATS)}")
    if vol.source is not None and not isinstance(vol.source, str):
        errors.add(vol, "source", f"must be the path of an image file on this machine, {got(vol.source)}")
        return
    if vol.source is not None and not _check_text(vol, "source", vol.source, errors, multiline=False):
        return
    if vol.backing is not None and vol.source is not None:
        errors.add(vol, "source", "a volume is either an overlay (backing=) or an image (source=), not both")
    if vol.backing is not None and vol.format != "qcow2":
        errors.add(vol, "format", "a copy-on-write overlay (backing=) must be qcow2")
    _check_host_image_refs(vol, errors)
    for field, message in url_source_problems(vol) if is_url(vol.source) else checksum_problems(vol):
        errors.add(vol, field, message)  # a URL is not fetched here: validation stays offline
    if vol.source is not None and not is_url(vol.source) and not Path(vol.source).is_file():
        errors.add(vol, "source", f"image file {vol.source} does not exist")
        return
    if vol.source is not None and not is_url(vol.source) and vol.format in VOLUME_FORMATS:
        actual = image_format(Path(vol.source))
        if actual != vol.format:
            errors.add(vol, "format", f"is {vol.format!r} but {vol.source} is a {actual} image; say format={actual!r}")
    if vol.size is not None:
        size = _check_size(vol, "size", vol.size, errors)
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
        except (ValueError, RecursionError, OSError):
            pass  # reported on the backing volume itself, or as a cycle


def _check_host_image_refs(vol: Volume, errors: _Errors) -> None:
    """`backing` given as a path, and `copy_of`: images on the host the stack does not manage."""
    if vol.backing is not None and not isinstance(vol.backing, (Volume, str)):
        errors.add(vol, "backing", f"must be a Volume of this stack or the absolute path of an image on the host, "
                                   f"{got(vol.backing)}")  # fmt: skip
    if vol.copy_of is not None and not isinstance(vol.copy_of, str):
        errors.add(vol, "copy_of", f"must be the absolute path of an image on the host, {got(vol.copy_of)}")
    for field in ("backing", "copy_of"):
        value = getattr(vol, field)
        if not isinstance(value, str) or not _check_text(vol, field, value, errors, multiline=False):
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
        _check_disks(vm, errors, attached)
        if not isinstance(vm.nics, list):
            errors.add(vm, "nics", f"expected a list of NIC or Network, {got(vm.nics)}")
        else:
            for i, nic in enumerate(vm.nics):
                _check_nic(vm, i, nic, errors, macs, ips)
        if vm.cloud_init is not None:
            _check_cloud_init(vm, errors)
        _check_graphics(vm, errors)
        _check_direct_boot(vm, errors)


def _check_disks(vm: VM, errors: _Errors, attached: dict[str, str]) -> None:
    if not isinstance(vm.disks, list):
        errors.add(vm, "disks", f"expected a list of Volume or Disk, {got(vm.disks)}")
        return
    boots: set[int] = set()
    vm_address = vm.address
    for i, disk in enumerate(vm.disks):
        field = f"disks[{i}]"
        if not isinstance(disk, Disk):
            errors.add(vm, field, f"expected a Volume or Disk of this stack, {got(disk)}")
            continue
        errors.problems(vm, disk, field + ".")
        if not isinstance(disk.volume, Volume):
            errors.add(vm, field, f"must be a Volume of this stack (Disk(volume)), {got(disk.volume)}")
            continue
        if disk.bus not in DISK_BUSES:
            errors.add(vm, f"{field}.bus", f"{disk.bus!r} is not one of {', '.join(DISK_BUSES)}")
        if disk.boot is not None:
            if not _is_int(disk.boot) or not 1 <= disk.boot <= 64:
                errors.add(vm, f"{field}.boot", f"must be a boot position from 1 (first) to 64, {got(disk.boot)}")
            elif disk.boot in boots:
                errors.add(vm, f"{field}.boot", f"boot order {disk.boot} is used twice")
            else:
                boots.add(disk.boot)
        if disk.target is not None and (not isinstance(disk.target, str) or not _TARGET.match(disk.target)):
            errors.add(vm, f"{field}.target", f"must be a device name such as 'vdb' or 'sda', {got(disk.target)}")
        volume = disk.volume.address
        if volume in attached:
            errors.add(vm, field, f"{volume} is already a disk of {attached[volume]}")
        attached[volume] = vm_address


def _check_cloud_init(vm: VM, errors: _Errors) -> None:
    ci = vm.cloud_init
    if not isinstance(ci, CloudInit):
        errors.add(vm, "cloud_init", f"expected a CloudInit(...), {got(ci)}")
        return
    errors.problems(vm, ci, "cloud_init.")
    if vm.seed_pool is None:
        errors.add(vm, "cloud_init", "needs at least one disk: the seed volume goes into its pool")
    _check_bool(vm, "cloud_init.sensitive", ci.sensitive, errors)
    for name in RAW_DOCUMENTS:
        _check_text(vm, f"cloud_init.{name}", getattr(ci, name), errors)
    for name in ("hostname", "user", "instance_id"):
        value = getattr(ci, name)
        if not _check_text(vm, f"cloud_init.{name}", value, errors, multiline=False) or _pending(value):
            continue
        if name == "hostname" and (len(value) > 253 or not all(_DNS_LABEL.match(x) for x in value.split("."))):
            errors.add(vm, "cloud_init.hostname", f"{value!r} is not a host name: letters, digits and '-', "
                                                  "dot-separated labels of at most 63")  # fmt: skip
        if name == "user" and not _USER.match(value):
            errors.add(vm, "cloud_init.user", f"{value!r} is not a user name: up to 32 lower-case letters, digits, "
                                              "'_' and '-', starting with a letter or '_'")  # fmt: skip
    if ci.password is not None:
        if not isinstance(ci.password, Secret):
            errors.add(vm, "cloud_init.password", f"must be a string or a Secret, got {type(ci.password).__name__}")
        else:
            _check_text(vm, "cloud_init.password", ci.password.reveal(), errors, multiline=False)
    for name, pattern in (("ssh_keys", None), ("packages", _PACKAGE)):
        items = getattr(ci, name)
        if not isinstance(items, (list, tuple)):
            one = "'ssh-ed25519 AAAA... me@host'" if name == "ssh_keys" else "'nginx'"
            errors.add(vm, f"cloud_init.{name}", f"expected a list of strings such as [{one}], {got(items)}")
            continue
        for i, item in enumerate(items):
            field = f"cloud_init.{name}[{i}]"
            if not _check_text(vm, field, item, errors, optional=False, multiline=False) or _pending(item):
                continue
            if pattern is not None and not pattern.match(item):
                errors.add(vm, field, f"{item!r} is not a package name (letters, digits, '+', '.', '-', ...)")
    if ci.user_data is not None:
        dropped = [n for n in ("user", "password", "ssh_keys", "packages") if getattr(ci, n)]
        if dropped:
            errors.add(vm, f"cloud_init.{dropped[0]}", f"raw user_data replaces the generated user-data, so "
                       f"{', '.join(dropped)} would be lost: put them into user_data, or drop user_data")  # fmt: skip


def _check_graphics(vm: VM, errors: _Errors) -> None:
    gfx = vm.graphics
    if gfx is None:
        return
    if not isinstance(gfx, Graphics):
        errors.add(vm, "graphics", f"expected 'vnc', 'spice' or Graphics(...), {got(gfx)}")
        return
    errors.problems(vm, gfx, "graphics.")
    if gfx.type not in GRAPHICS_TYPES:
        errors.add(vm, "graphics.type", f"{gfx.type!r} is not one of none, {', '.join(GRAPHICS_TYPES)}")
    try:
        ipaddress.ip_address(gfx.listen)
    except ValueError:
        errors.add(vm, "graphics.listen", f"{gfx.listen!r} is not an IP address; use '127.0.0.1' (this host only), "
                                          "'0.0.0.0' (every address) or one of the host's addresses")  # fmt: skip
    password = gfx.password
    if password is None:
        return
    if not isinstance(password, Secret):
        errors.add(vm, "graphics.password", f"must be a string or a Secret, got {type(password).__name__}")
        return
    if _check_text(vm, "graphics.password", password.reveal(), errors, multiline=False):
        length = len(password.reveal())
        if gfx.type == "vnc" and length > VNC_PASSWORD_MAX and not _pending(password.reveal()):
            errors.add(vm, "graphics.password", f"is {length} characters long; VNC allows at most {VNC_PASSWORD_MAX}")


def _check_direct_boot(vm: VM, errors: _Errors) -> None:
    for field in ("kernel", "initrd"):
        value = getattr(vm, field)
        if value is not None and not isinstance(value, Volume):
            hint = f"for example Volume({field!r}, pool=..., source=...)"
            errors.add(vm, field, f"must be a Volume of this stack ({hint}), {got(value)}")
    if vm.initrd is not None and vm.kernel is None:
        errors.add(vm, "initrd", "an initrd needs kernel= as well")
    if vm.cmdline is not None:
        if vm.kernel is None or not isinstance(vm.cmdline, str):
            errors.add(vm, "cmdline", "a kernel command line needs kernel= (and must be a string)")
        else:
            _check_text(vm, "cmdline", vm.cmdline, errors, multiline=False)


def _check_vm_scalars(vm: VM, errors: _Errors) -> None:
    for field, value in (("vcpus", vm.vcpus), ("max_vcpus", vm.max_vcpus_count)):
        if not _is_int(value) or value < 1:
            errors.add(vm, field, f"must be a whole number of at least 1, got {value!r}")
        elif value > MAX_VCPUS:
            errors.add(vm, field, f"{value} is more than libvirt allows (at most {MAX_VCPUS})")
    if _is_int(vm.vcpus) and _is_int(vm.max_vcpus_count) and vm.vcpus > vm.max_vcpus_count:
        errors.add(vm, "max_vcpus", f"{vm.max_vcpus} is less than vcpus={vm.vcpus}")
    memory = _check_size(vm, "memory", vm.memory, errors)
    maximum = _check_size(vm, "max_memory", vm.max_memory, errors) if vm.max_memory is not None else memory
    if memory is not None and memory < MIB:
        errors.add(vm, "memory", f"{vm.memory!r} is too small; give at least 1MiB (for example '512MiB')")
    if memory is not None and maximum is not None and memory > maximum:
        errors.add(vm, "max_memory", f"{vm.max_memory} is less than memory={vm.memory}")
    if vm.firmware not in FIRMWARES:
        errors.add(vm, "firmware", f"{vm.firmware!r} is not one of {', '.join(FIRMWARES)}")
    if vm.state not in POWER_STATES:
        errors.add(vm, "state", f"{vm.state!r} is not one of {', '.join(POWER_STATES)}")
    if vm.machine is not None and (not isinstance(vm.machine, str) or not _MACHINE.match(vm.machine)):
        errors.add(vm, "machine", f"{vm.machine!r} is not a machine type such as 'q35' or 'pc-i440fx-7.2' "
                                  "(letters, digits, '.', '-', '_'); `virsh capabilities` lists them")  # fmt: skip
    if vm.arch is not None and (not isinstance(vm.arch, str) or not _ARCH.match(vm.arch)):
        errors.add(vm, "arch", f"{vm.arch!r} is not an architecture such as 'x86_64' or 'aarch64'")
    for field in ("serial", "autostart", "console_log", "shutdown_on_delete"):
        _check_bool(vm, field, getattr(vm, field), errors)
    timeout = vm.shutdown_timeout
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 <= timeout <= MAX_TIMEOUT:
        errors.add(vm, "shutdown_timeout", f"must be a number of seconds from 0 to {MAX_TIMEOUT:g}, {got(timeout)}")
    _check_text(vm, "description", vm.description, errors, optional=False)


def _check_nic(
    vm: VM,
    i: int,
    nic: object,
    errors: _Errors,
    macs: dict[str, str],
    ips: dict[tuple[str, str], str],
) -> None:
    field = f"nics[{i}]"
    if not isinstance(nic, NIC):
        hint = " (a network this stack does not manage: Network(name, existing=True))" if isinstance(nic, str) else ""
        errors.add(vm, field, f"expected a NIC or a Network of this stack{hint}, {got(nic)}")
        return
    errors.problems(vm, nic, field + ".")
    if (nic.network is None) == (nic.bridge is None):
        errors.add(vm, field, "give exactly one of network= (a Network) or bridge= (a host bridge name)")
        return
    if nic.network is not None and not isinstance(nic.network, Network):
        hint = " (a network this stack does not manage: Network(name, existing=True))"
        errors.add(vm, f"{field}.network", f"must be a Network of this stack{hint}, {got(nic.network)}")
        return
    if nic.bridge is not None and (not isinstance(nic.bridge, str) or not _BRIDGE.match(nic.bridge)):
        errors.add(
            vm, f"{field}.bridge", f"{nic.bridge!r} is not a host bridge name (1-15 letters, digits, '.', '-', '_')"
        )
    if nic.model not in NIC_MODELS:
        errors.add(vm, f"{field}.model", f"{nic.model!r} is not one of {', '.join(NIC_MODELS)}")
    if nic.mac is not None:
        mac = nic.mac.lower() if isinstance(nic.mac, str) else ""
        if not _MAC.match(mac):
            errors.add(vm, f"{field}.mac", f"{nic.mac!r} is not a MAC address like 52:54:00:12:34:56")
        elif int(mac[:2], 16) & 1:
            errors.add(vm, f"{field}.mac", f"{mac} is a multicast address; a NIC needs a unicast one "
                                           "(even first byte), like 52:54:00:12:34:56")  # fmt: skip
        elif mac == "00:00:00:00:00:00":
            errors.add(vm, f"{field}.mac", "00:00:00:00:00:00 is not a usable MAC; leave mac= out to get one")
        elif mac in macs:
            errors.add(vm, f"{field}.mac", f"{mac} is also used by {macs[mac]}")
        else:
            macs[mac] = f"{vm.address} {field}"
    if nic.ip is None:
        return
    net = nic.network
    if not isinstance(nic.ip, str):
        errors.add(vm, f"{field}.ip", f"must be an IPv4 address such as '10.10.0.10', {got(nic.ip)}")
        return
    if net is None or net.existing is True:
        what = "a host bridge" if net is None else f"{net.address}, which this stack does not manage"
        errors.add(
            vm, f"{field}.ip", f"a fixed IP is a DHCP reservation in a Network this stack manages, not on {what}"
        )
        return
    if not net.cidr or not isinstance(net.cidr, str):
        errors.add(vm, f"{field}.ip", "a fixed IP needs a NIC on a virtplan Network with a cidr")
        return
    try:
        subnet = net.ip_network
    except ValueError:
        return  # reported on the network
    try:
        ip = ipaddress.IPv4Address(nic.ip)
    except ValueError as exc:
        errors.add(vm, f"{field}.ip", f"{nic.ip!r} is not an IPv4 address ({exc})")
        return
    if not _is_host_ip(ip, subnet):
        errors.add(vm, f"{field}.ip", f"{ip} is outside {net.address} ({subnet})")
        return
    try:
        gateway = net.gateway_ip
    except ValueError:
        gateway = None  # reported on the network
    if ip == gateway:
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
        host = resource.host  # (a volume's is its pool's: worked out once, not per reference)
        for dep in resource.dependencies():
            if id(dep) not in declared:
                errors.add(
                    resource,
                    _ref_field(resource, dep),
                    f"refers to {dep.kind} {dep.key!r}, which this stack does not declare",
                )
                continue
            dep_host = dep.host
            if isinstance(dep_host, Host) and isinstance(host, Host) and dep_host is not host:
                errors.add(
                    resource, _ref_field(resource, dep),
                    f"refers to {dep.address} on host {dep_host.name!r}, but lives on host {host.name!r}",
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
    # By object, not address: addresses are computed, and only a cycle needs them.
    try:
        dependency_rounds(stack.managed())
    except graphlib.CycleError as exc:
        by_id = {id(r): r for r in stack.managed()}
        path = [by_id[i].address if i in by_id else "?" for i in exc.args[1]]
        errors.add(path[0], "dependencies", f"dependency cycle: {' -> '.join(path)}")
