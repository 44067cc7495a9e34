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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

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
        host = self.host.name if self.host is not None else "?"
        return f"{host}/{self.kind}/{self.key}"

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
    """

    kind: ClassVar[str] = "host"

    def __init__(
        self,
        name: str,
        uri: str = "qemu:///system",
        *,
        domain_type: str | None = None,
        workers: int = 4,
        records_pool: str = "virtplan",
        records_path: str = "/var/lib/libvirt/virtplan",
    ):
        self.name, self.uri, self.domain_type, self.workers = name, uri, domain_type, workers
        self.records_pool, self.records_path = records_pool, records_path
        self._host = self
        self._register()

    @property
    def address(self) -> str:
        return self.name


def _derive_bridge(name: str) -> str:
    candidate = f"vp-{name}"
    if len(candidate) <= 15 and all(c.isalnum() or c in "-_" for c in name):
        return candidate
    return "vp-" + hashlib.sha1(name.encode()).hexdigest()[:10]


class Network(Resource):
    """A libvirt virtual network (NAT, routed, isolated, or attached to a host bridge)."""

    kind: ClassVar[str] = "network"

    def __init__(
        self,
        name: str,
        *,
        host: Host | None = None,
        mode: str = "nat",
        cidr: str | None = None,
        gateway: str | None = None,
        dhcp: bool = True,
        dhcp_range: tuple[str, str] | None = None,
        domain: str | None = None,
        autostart: bool = True,
        bridge: str | None = None,
    ):
        self.name, self._host, self.mode, self.cidr = name, host, mode, cidr
        self.gateway, self.dhcp, self.dhcp_range, self.domain = gateway, dhcp, dhcp_range, domain
        self.autostart, self.bridge = autostart, bridge
        self._register()

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

    def __init__(
        self,
        name: str,
        *,
        path: str,
        host: Host | None = None,
        type: str = "dir",
        autostart: bool = True,
    ):
        self.name, self.path, self._host, self.type, self.autostart = name, path, host, type, autostart
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
        sha256: str | None = None,
        sha512: str | None = None,
    ):
        self.pool: Pool | None = pool
        self.name, self.size, self.format = name, size, format
        self.backing = backing
        self.source = os.fspath(source) if source is not None else None
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
        return self.pool.host if self.pool is not None else None

    @host.setter
    def host(self, value: Host | None) -> None:
        raise AttributeError("a volume's host is its pool's host")

    @property
    def key(self) -> str:
        pool = self.pool.name if self.pool is not None else "?"
        return f"{pool}/{self.name}"

    def dependencies(self) -> list[Resource]:
        deps: list[Resource] = [self.pool] if self.pool is not None else []
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
    templates/cloud-init/*.j2. Raw `user_data` wins over the high-level fields."""

    user_data: str | None = None
    meta_data: str | None = None
    network_config: str | None = None
    hostname: str | None = None
    user: str | None = None
    password: Secret | str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    packages: list[str] = field(default_factory=list)
    instance_id: str | None = None

    def __post_init__(self) -> None:
        self.password = secret(self.password)


@dataclass(eq=False)
class Graphics:
    """A VNC or SPICE console, on 127.0.0.1 unless told otherwise."""

    type: str = "vnc"
    listen: str = "127.0.0.1"
    password: Secret | str | None = None

    def __post_init__(self) -> None:
        self.password = secret(self.password)


class VM(Resource):
    """A libvirt domain.

    `memory` is what the guest gets now; `max_memory` (default: `memory`) is the ceiling
    up to which memory can grow live. The same holds for `vcpus` and `max_vcpus`.
    `kernel`/`initrd` (volumes, so remote hosts work) and `cmdline` boot a kernel directly.
    With `serial` and `console_log`, the serial console is also written to
    `<vm>-console.log` in the first disk's pool, where `virtplan console-log` reads it.
    """

    kind: ClassVar[str] = "vm"

    def __init__(
        self,
        name: str,
        *,
        host: Host | None = None,
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
        kernel: Volume | None = None,
        initrd: Volume | None = None,
        cmdline: str | None = None,
        console_log: bool = True,
    ):
        self.name, self._host, self.vcpus, self.memory = name, host, vcpus, memory
        self.kernel, self.initrd, self.cmdline, self.console_log = kernel, initrd, cmdline, console_log
        self.max_vcpus, self.max_memory, self.machine, self.arch = max_vcpus, max_memory, machine, arch
        self.firmware = firmware
        self.disks = [d if isinstance(d, Disk) else Disk(d) for d in (disks or [])]
        self.nics = [n if isinstance(n, NIC) else NIC(network=n) for n in (nics or [])]
        self.cloud_init = cloud_init
        self.graphics = Graphics(graphics) if isinstance(graphics, str) else graphics
        self.serial, self.autostart, self.state = serial, autostart, state
        self.description, self.shutdown_timeout = description, shutdown_timeout
        self._register()

    def dependencies(self) -> list[Resource]:
        deps: list[Resource] = [d.volume for d in self.disks]
        deps += [v for v in (self.kernel, self.initrd) if v is not None]
        deps += [n.network for n in self.nics if n.network is not None]
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
        return self.disks[0].volume.pool if self.disks else None

    @property
    def seed_volume_name(self) -> str:
        return f"{self.name}-cidata.iso"

    @property
    def console_log_name(self) -> str:
        """The serial console's log, a file in the seed pool so libvirt can stream it back."""
        return f"{self.name}-console.log"

    def declared(self) -> set[str]:
        fields = {
            "type", "vcpus", "max_vcpus", "memory", "max_memory", "firmware", "disks", "nics",
            "cloud_init", "graphics", "serial", "autostart", "state", "description",
            "kernel", "initrd", "cmdline", "console_log",
        }  # fmt: skip
        if self.machine:
            fields.add("machine")
        if self.arch:
            fields.add("arch")
        return fields
