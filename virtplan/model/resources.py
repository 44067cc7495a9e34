"""Declarative resource classes. No libvirt import here.

A resource registers itself with the stack being loaded when it is constructed, so a
stack file is ordinary Python: loops, functions and imports all work. Fields keep what
the user wrote; `virtplan.model.validate` checks them all at once and reports every
problem with the resource address and field name.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from virtplan.model.fields import lenient, normalise_newlines
from virtplan.model.registry import register
from virtplan.model.secrets import Secret, secret
from virtplan.units import parse_size

if TYPE_CHECKING:
    from virtplan.model.images import RemoteImage

NetworkMode = Literal["nat", "route", "isolated", "bridge"]
PowerState = Literal["running", "stopped"]
NETWORK_MODES = ("nat", "route", "isolated", "bridge")
POWER_STATES = ("running", "stopped")
VOLUME_FORMATS = ("qcow2", "raw")
FIRMWARES = ("bios", "uefi")
DISK_BUSES = ("virtio", "scsi", "sata", "ide")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
GRAPHICS_TYPES = ("vnc", "spice")
DOMAIN_TYPES = ("kvm", "qemu")


class Resource:
    """Base of everything a stack declares. `kind` names the libvirt object kind."""

    kind: ClassVar[str] = ""
    name: str
    _host: Host | None = None
    #: The name this resource had before it was renamed in the stack (VM, network, volume):
    #: the plan renames the object on the host instead of deleting and creating it, as
    #: Terraform's `moved` blocks or Pulumi's aliases. Inert once no object has that name.
    renamed_from: str | None = None
    #: Networks and pools declared on several hosts (`host=[kvm1, kvm2]`) exist on each of
    #: them; validation turns them into one object per host (`virtplan.model.placement`).
    replicas: list[Host] | None = None

    def _register(self) -> None:
        register(self)

    @property
    def host(self) -> Host | None:
        """The hypervisor this resource lives on (assigned by validation when omitted)."""
        return self._host

    @host.setter
    def host(self, value: Host | None) -> None:
        self._host = value

    @property
    def key(self) -> str:
        """Name unique per host and kind (volumes are qualified by their pool)."""
        return self.name

    @property
    def address(self) -> str:
        return f"{self._where()}/{self.kind}/{self.key}"

    def _where(self) -> str:
        """The host part of the address: the host's name; "{kvm1,kvm2}" for an object
        declared on several hosts (until validation gives each host its own); else "?"
        (no host, or something that is not a Host: validation reports it)."""
        if isinstance(self.host, Host):
            return self.host.name
        replicas = self.replicas
        if replicas is None and isinstance(getattr(self, "pool", None), Resource):
            replicas = self.pool.replicas  # type: ignore[attr-defined]
        if replicas:
            return "{" + ",".join(getattr(h, "name", "?") for h in replicas) + "}"
        return "?"

    def dependencies(self) -> list[Resource]:
        """Resources that must exist before this one."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.address}>"


class Host(Resource):
    """A libvirt hypervisor, reached by URI.

    `domain_type` is declared, not guessed, where it matters: on hosts whose /dev/kvm
    cannot run guest kernels use "qemu". None means "kvm if the host offers it, else qemu".
    `records_pool`/`records_path` name the `dir` storage pool where virtplan keeps its
    records on this host (created on the first apply; see `virtplan.hosts.ledger`).

    For placement (`VM(host=[kvm1, kvm2])`), a host declares the share of it this stack
    may use: `memory` and `vcpus`, times `memory_overcommit` and `cpu_overcommit`. For
    live migration, `migration_uri` is how the *other* hosts reach this one (libvirt's
    peer-to-peer migration connects from the source host); by default its `uri`.
    `workers` bounds the changes applied at once on this host; None (the default) sizes it
    from the host (`virtplan.apply.concurrency`).
    """

    kind: ClassVar[str] = "host"

    @lenient
    def __init__(
        self,
        name: str,
        uri: str = "qemu:///system",
        *,
        domain_type: str | None = None,
        workers: int | None = None,
        records_pool: str = "virtplan",
        records_path: str = "/var/lib/libvirt/virtplan",
        memory: int | str | None = None,
        vcpus: int | None = None,
        memory_overcommit: float = 1.0,
        cpu_overcommit: float = 1.0,
        migration_uri: str | None = None,
    ):
        self.name, self.uri, self.domain_type, self.workers = name, uri, domain_type, workers
        self.records_pool, self.records_path = records_pool, records_path
        self.memory, self.vcpus = memory, vcpus
        self.memory_overcommit, self.cpu_overcommit = memory_overcommit, cpu_overcommit
        self.migration_uri = migration_uri
        self._host = self
        self._register()

    @property
    def peer_uri(self) -> str:
        """The URI other hosts use to reach this one (live migration)."""
        return self.migration_uri or self.uri

    @property
    def address(self) -> str:
        return self.name


def _one_or_many(host: object) -> tuple[Host | None, list[Host] | None]:
    """`host=` as given: one host, or several (a list or tuple: the object is on each)."""
    if isinstance(host, (list, tuple)):
        return None, list(host)
    return host, None  # type: ignore[return-value]  # anything else is for validation to judge


def _derive_bridge(name: str) -> str:
    candidate = f"vp-{name}"
    if len(candidate) <= 15 and all(c.isalnum() or c in "-_" for c in name):
        return candidate
    return "vp-" + hashlib.sha1(name.encode()).hexdigest()[:10]


class Network(Resource):
    """A libvirt virtual network (NAT, routed, isolated, or attached to a host bridge).

    With `existing=True` it is a network the stack does not manage, referred to by name (for
    example libvirt's `default`): VMs attach to it, plan checks that it exists on the host,
    and virtplan never creates, changes or deletes it; give no other field then.
    """

    kind: ClassVar[str] = "network"

    @lenient
    def __init__(
        self,
        name: str,
        *,
        host: Host | Sequence[Host] | None = None,
        mode: str = "nat",
        cidr: str | None = None,
        gateway: str | None = None,
        dhcp: bool = True,
        dhcp_range: tuple[str, str] | None = None,
        domain: str | None = None,
        autostart: bool = True,
        bridge: str | None = None,
        renamed_from: str | None = None,
        existing: bool = False,
    ):
        self.name, self.mode, self.cidr = name, mode, cidr
        self._host, self.replicas = _one_or_many(host)
        self.renamed_from = renamed_from
        self.gateway, self.dhcp, self.dhcp_range, self.domain = gateway, dhcp, dhcp_range, domain
        self.autostart, self.bridge, self.existing = autostart, bridge, existing
        self._register()

    @classmethod
    def existing_network(cls, name: str, *, host: Host | None = None) -> Network:
        """A network this stack does not manage (libvirt's `default`, one made by hand),
        referred to by name: VMs attach to it; virtplan reads it, never creates, changes
        or deletes it. The same as Network(name, existing=True)."""
        return cls(name, host=host, existing=True)

    @property
    def ip_network(self) -> ipaddress.IPv4Network:
        assert self.cidr is not None
        return ipaddress.IPv4Network(self.cidr, strict=True)

    @property
    def gateway_ip(self) -> ipaddress.IPv4Address:
        if self.gateway:
            return ipaddress.IPv4Address(self.gateway)
        return next(self.ip_network.hosts())

    @property
    def range_ips(self) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]:
        """The DHCP range: declared, or the upper half of the subnet's hosts."""
        if self.dhcp_range:
            start, end = self.dhcp_range
            return ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
        net = self.ip_network
        return net.network_address + net.num_addresses // 2, net.broadcast_address - 1

    @property
    def bridge_name(self) -> str:
        if self.bridge:
            return self.bridge
        return _derive_bridge(self.name)

    def declared(self) -> set[str]:
        """Comparable fields this network pins (the rest are libvirt's or derived)."""
        fields = {"mode", "autostart", "active", "domain", "reservations"}
        if self.cidr:
            fields |= {"cidr", "gateway", "dhcp", "dhcp_range"}
        if self.bridge or self.mode == "bridge":
            fields.add("bridge")
        return fields


class Pool(Resource):
    """A storage pool. Only `dir` pools are supported so far."""

    kind: ClassVar[str] = "pool"

    @lenient
    def __init__(
        self,
        name: str,
        *,
        path: str,
        host: Host | Sequence[Host] | None = None,
        type: str = "dir",
        autostart: bool = True,
    ):
        self.name, self.path, self.type, self.autostart = name, path, type, autostart
        self._host, self.replicas = _one_or_many(host)
        self._register()


class Volume(Resource):
    """A volume in a pool: blank, a copy-on-write overlay on `backing`, or from `source`.

    `source` is a local image file uploaded through libvirt's stream API, so it works on
    remote hosts too, or the URL of one (`https://...`) with its `sha256` (or `sha512`):
    downloaded once into virtplan's local cache, verified, then uploaded the same way.
    An overlay's size defaults to its backing volume's size.

    `backing` may also be the path of an image on the host that this stack does not manage
    (a clone's overlay on a frozen source disk; `backing_format` says its format), and
    `copy_of` makes the volume a full copy of such an image, taken by libvirt on the host
    when the volume is created. Both need `size`.
    """

    kind: ClassVar[str] = "volume"

    @lenient
    def __init__(
        self,
        name: str,
        *,
        pool: Pool,
        size: int | str | None = None,
        format: str = "qcow2",
        backing: Volume | str | None = None,
        source: str | os.PathLike[str] | None = None,
        backing_format: str | None = None,
        copy_of: str | None = None,
        renamed_from: str | None = None,
        sha256: str | None = None,
        sha512: str | None = None,
    ):
        self.pool: Pool | None = pool
        self.renamed_from = renamed_from  # the old name in the same pool
        self.name, self.size, self.format = name, size, format
        self.backing = backing
        self.source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else source
        self.backing_format, self.copy_of = backing_format, copy_of
        self.sha256, self.sha512 = sha256, sha512
        self.image: RemoteImage | None = None  # a URL source's facts, read when planning (not at load)
        self._register()

    @property
    def checksum(self) -> tuple[str, str] | None:
        """("sha256" or "sha512", the lower-case hex digest) of a URL source, if declared."""
        if self.sha256 is not None:
            return "sha256", str(self.sha256).lower()
        if self.sha512 is not None:
            return "sha512", str(self.sha512).lower()
        return None

    @property
    def host(self) -> Host | None:
        """A volume lives on its pool's host."""
        return self.pool.host if isinstance(self.pool, Pool) else None

    @host.setter
    def host(self, value: Host | None) -> None:
        raise AttributeError("a volume's host is its pool's host")

    @property
    def key(self) -> str:
        pool = self.pool.name if isinstance(self.pool, Pool) else "?"
        return f"{pool}/{self.name}"

    def dependencies(self) -> list[Resource]:
        deps: list[Resource] = [self.pool] if isinstance(self.pool, Pool) else []
        if isinstance(self.backing, Volume):
            deps.append(self.backing)
        return deps

    @property
    def size_bytes(self) -> int:
        """Declared size; an overlay without one takes its backing's; an image its own."""
        if self.size is not None:
            return parse_size(self.size)
        if isinstance(self.backing, Volume):
            return self.backing.size_bytes
        if self.source is not None:
            from virtplan.model.images import image_virtual_size, is_url

            if is_url(self.source):
                if self.image is None:
                    raise ValueError(f"the size of the image at {self.source} is read when planning")
                return self.image.virtual_size
            return image_virtual_size(Path(self.source))
        raise ValueError("size is required for a blank volume (for example size='10GiB')")

    def declared(self) -> set[str]:
        fields = {"format", "capacity"}
        if self.backing is not None:
            fields.add("backing")
        return fields


@dataclass(eq=False, repr=False)
class Disk:
    """A volume attached to a VM."""

    volume: Volume
    bus: str = "virtio"
    boot: int | None = None
    target: str | None = None


@dataclass(eq=False, repr=False)
class NIC:
    """A network interface: on a virtplan Network or on an existing host bridge.

    Without `mac`, a MAC is derived from the stack, VM and NIC position and then kept:
    a VM that already exists keeps the MAC libvirt has. `ip` makes a DHCP reservation.
    """

    network: Network | None = None
    bridge: str | None = None
    model: str = "virtio"
    mac: str | None = None
    ip: str | None = None


@dataclass(eq=False)
class CloudInit:
    """Cloud-init NoCloud seed: raw documents, or a few high-level fields rendered by
    templates/cloud-init/*.j2.

    Raw `user_data`, `meta_data` and `network_config` may hold anything (passwords, keys), so
    they are secrets unless `sensitive=False`: masked in plans, commands and `render` (but
    `render --show-secrets`), and only written into the seed itself. With raw `user_data`,
    `user`, `password`, `ssh_keys` and `packages` cannot be given (they would be lost).
    `password` and `ssh_keys` without `user` are for the image's default user."""

    user_data: Secret | str | None = None
    meta_data: Secret | str | None = None
    network_config: Secret | str | None = None
    hostname: str | None = None
    user: str | None = None
    password: Secret | str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    instance_id: str | None = None
    sensitive: bool = True

    def __post_init__(self) -> None:
        self.password = secret(self.password)
        for name in RAW_DOCUMENTS:
            value = normalise_newlines(getattr(self, name))
            if self.sensitive is not False:
                value = secret(value)  # type: ignore[arg-type]
            elif isinstance(value, Secret):
                value = value.reveal()
            setattr(self, name, value)

    def document(self, name: str) -> str | None:
        """A raw document's text ("user_data", "meta_data", "network_config"), or None."""
        value = getattr(self, name)
        return value.reveal() if isinstance(value, Secret) else value

    @property
    def has_secret(self) -> bool:
        """Whether the seed holds a secret: a password, or sensitive raw documents."""
        raw = any(isinstance(getattr(self, n), Secret) for n in RAW_DOCUMENTS)
        return raw or self.password is not None


RAW_DOCUMENTS = ("user_data", "meta_data", "network_config")


@dataclass(eq=False)
class Graphics:
    """A VNC or SPICE console, on 127.0.0.1 unless told otherwise (`listen` is an IP address)."""

    type: str = "vnc"
    listen: str = "127.0.0.1"
    password: Secret | str | None = None

    def __post_init__(self) -> None:
        self.password = secret(self.password)


@dataclass(eq=False)
class Placement:
    """Where a VM may run: one of `hosts`, chosen by the planner (`virtplan.model.placement`).

    The planner keeps a VM on the host where it is found; a new VM (or one that no longer
    fits where it is) goes to the candidate with the most free declared capacity (each
    host's `memory` and `vcpus`, times its overcommit ratios). VMs that share an
    `anti_affinity` group are placed on different hosts. `VM(host=[kvm1, kvm2])` is
    `VM(host=Placement([kvm1, kvm2]))`.
    """

    hosts: Sequence[Host]
    anti_affinity: str | None = None

    @property
    def names(self) -> list[str]:
        return [getattr(h, "name", "?") for h in self.hosts]


for _part in (Disk, NIC, CloudInit, Graphics):
    _part.__init__ = lenient(_part.__init__)  # type: ignore[method-assign]


class VM(Resource):
    """A libvirt domain.

    `memory` is what the guest gets now; `max_memory` (default: `memory`) is the ceiling
    up to which memory can grow live. The same holds for `vcpus` and `max_vcpus`.
    `kernel`/`initrd` (volumes, so remote hosts work) and `cmdline` boot a kernel directly.
    With `serial` and `console_log`, the serial console is also written to
    `<vm>-console.log` in the first disk's pool, where `virtplan console-log` reads it.
    A running VM that is stopped or restarted gets `shutdown_timeout` seconds to shut down
    after an ACPI power-button press; one that is deleted together with all its disks is
    switched off at once (nothing on its disks is kept) unless `shutdown_on_delete`.
    """

    kind: ClassVar[str] = "vm"

    @lenient
    def __init__(
        self,
        name: str,
        *,
        host: Host | Sequence[Host] | Placement | None = None,
        vcpus: int = 1,
        memory: int | str = "512MiB",
        max_vcpus: int | None = None,
        max_memory: int | str | None = None,
        machine: str | None = None,
        arch: str | None = None,
        firmware: str = "bios",
        disks: list[Disk | Volume] | None = None,
        nics: list[NIC | Network] | None = None,
        cloud_init: CloudInit | None = None,
        graphics: Graphics | str | None = None,
        serial: bool = True,
        autostart: bool = False,
        state: str = "running",
        description: str = "",
        shutdown_timeout: float = 60.0,
        shutdown_on_delete: bool = False,
        kernel: Volume | None = None,
        initrd: Volume | None = None,
        cmdline: str | None = None,
        console_log: bool = True,
        renamed_from: str | None = None,
    ):
        self.name, self.vcpus, self.memory = name, vcpus, memory
        self.placement: Placement | None = None
        if isinstance(host, (list, tuple)):
            host = Placement(list(host))
        if isinstance(host, Placement):
            self.placement, host = host, None
        self._host = host  # type: ignore[assignment]  # anything else is for validation to judge
        #: Why the VM is on its host, when a placement chose it (set by `virtplan.model.placement`).
        self.placed: str | None = None
        self.renamed_from = renamed_from
        self.kernel, self.initrd, self.cmdline, self.console_log = kernel, initrd, cmdline, console_log
        self.max_vcpus, self.max_memory, self.machine, self.arch = max_vcpus, max_memory, machine, arch
        self.firmware = firmware
        # Lists of the right shape are normalised (a Volume is a Disk on it, a Network a NIC
        # on it); anything else is kept as given, for validation to report.
        self.disks: list[Disk] = _items(disks, Disk, Volume, lambda v: Disk(v))
        self.nics: list[NIC] = _items(nics, NIC, Network, lambda n: NIC(network=n))
        self.cloud_init = cloud_init
        self.graphics = Graphics(graphics) if isinstance(graphics, str) else graphics
        self.serial, self.autostart, self.state = serial, autostart, state
        self.description: str = normalise_newlines(description)  # type: ignore[assignment]
        self.shutdown_timeout, self.shutdown_on_delete = shutdown_timeout, shutdown_on_delete
        self._register()

    def _where(self) -> str:
        if self.host is None and self.placement is not None:  # not placed yet
            return "{" + ",".join(self.placement.names) + "}"
        return super()._where()

    def dependencies(self) -> list[Resource]:
        """The resources this VM uses (only well-formed references; validation reports the rest)."""
        deps: list[Resource] = []
        if isinstance(self.disks, list):
            deps += [d.volume for d in self.disks if isinstance(d, Disk) and isinstance(d.volume, Resource)]
        deps += [v for v in (self.kernel, self.initrd) if isinstance(v, Resource)]
        if isinstance(self.nics, list):
            deps += [n.network for n in self.nics if isinstance(n, NIC) and isinstance(n.network, Resource)]
        return deps

    @property
    def memory_bytes(self) -> int:
        return parse_size(self.memory)

    @property
    def max_memory_bytes(self) -> int:
        return parse_size(self.max_memory) if self.max_memory is not None else self.memory_bytes

    @property
    def max_vcpus_count(self) -> int:
        return self.max_vcpus if self.max_vcpus is not None else self.vcpus

    @property
    def seed_pool(self) -> Pool | None:
        """Where the cloud-init seed volume lives: the pool of the first disk."""
        first = self.disks[0] if isinstance(self.disks, list) and self.disks else None
        if not isinstance(first, Disk) or not isinstance(first.volume, Volume):
            return None
        pool = first.volume.pool
        return pool if isinstance(pool, Pool) else None

    @property
    def seed_volume_name(self) -> str:
        return f"{self.name}-cidata.iso"

    @property
    def console_log_name(self) -> str:
        """The serial console's log, a file in the seed pool so libvirt can stream it back."""
        return f"{self.name}-console.log"

    def declared(self) -> frozenset[str]:
        """Comparable fields this VM pins: all but the machine type and the architecture
        unless declared (the host's defaults are libvirt's to choose)."""
        if self.machine or self.arch:
            return _VM_PINNED | {n for n in ("machine", "arch") if getattr(self, n)}
        return _VM_PINNED


_VM_PINNED = frozenset({
    "type", "vcpus", "max_vcpus", "memory", "max_memory", "firmware", "disks", "nics", "cloud_init", "graphics",
    "serial", "autostart", "state", "description", "kernel", "initrd", "cmdline", "console_log",
})  # fmt: skip


def _items(value: object, part: type, plain: type, wrap: Callable[[Any], Any]) -> Any:
    """`value` as a list of `part`: items that are `plain` wrapped, others kept as given;
    None is an empty list; anything but a list or tuple is kept as given."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        return value
    return [wrap(item) if isinstance(item, plain) else item for item in value]
