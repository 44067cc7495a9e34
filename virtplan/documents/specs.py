"""The comparable specs the planner diffs: one `TypedDict` per kind of libvirt object.

A spec is a plain dict of the fields virtplan manages on one object. Each field is defined
once, here, and produced in exactly two places, named by what they read:

- `virtplan.documents.parse.parse_domain(root)` (and `parse_network`, `parse_pool`,
  `parse_volume`): from libvirt XML, both what virtplan rendered and what a host returns;
- `virtplan.documents.fastspec.desired_domain(vm, renderer)` (and `desired_network`, ...):
  from the model and the render contexts, without rendering; `tests/unit/test_fastspec.py`
  proves it equal to rendering and parsing back.

`virtplan.hosts.observe` adds the runtime fields (`NotRequired` below: power state,
autostart, active), which only a host knows and only a stack declares.

The keys and values are a stored format: drift records, saved plans and Pulumi outputs
hold them. Add fields; never rename or re-encode one.
"""

# No `from __future__ import annotations`: TypedDict must see `NotRequired` itself, so
# `__optional_keys__` names the runtime fields.
from typing import Any, NotRequired, TypedDict, cast


class DiskSpec(TypedDict):
    volume: str | None  # "pool/volume"; a path for a disk outside any pool
    device: str  # "disk", "cdrom", ...
    bus: str | None  # "virtio", "scsi", "sata", "ide"
    boot: int | None  # boot order; None when not a boot device


class NicSpec(TypedDict):
    network: str | None  # a libvirt network's name, or None for a host bridge
    bridge: str | None  # a host bridge's name, or None on a network
    model: str | None  # "virtio", "e1000", ...
    mac: str | None  # lower case


class GraphicsSpec(TypedDict):
    type: str | None  # "vnc" or "spice"
    listen: str | None  # address
    password: str | None  # the password's salted digest (never the password)


class VMSpec(TypedDict):
    """A domain: its persistent definition, plus the runtime fields a host reports."""

    type: str | None  # domain type: "kvm", "qemu"
    arch: str | None
    machine: str | None
    vcpus: int  # current
    max_vcpus: int
    memory: int | None  # bytes, current
    max_memory: int | None  # bytes
    firmware: str  # "bios" or "uefi"
    disks: list[DiskSpec]  # in device order; the cloud-init seed CD-ROM is left out
    nics: list[NicSpec]  # in device order
    cloud_init: str | None  # digest of the seed files (secrets digested too)
    graphics: GraphicsSpec | None
    serial: bool  # a serial console
    description: str
    kernel: str | None  # path of the kernel for direct boot
    initrd: str | None  # path of the initrd for direct boot
    cmdline: str | None  # kernel command line for direct boot
    console_log: str | None  # path of the file the serial console is logged to
    state: NotRequired[str]  # runtime: "running" or "stopped"
    autostart: NotRequired[bool]  # runtime
    unplugged: NotRequired[list[str]]  # runtime: MACs of running NICs off their network's bridge, sorted


class ReservationSpec(TypedDict):
    mac: str  # lower case
    ip: str | None
    name: str | None


class NetworkSpec(TypedDict):
    mode: str  # "nat", "route", "bridge", "isolated", ...
    bridge: str | None  # the bridge libvirt creates, or the host bridge in "bridge" mode
    domain: str | None  # DNS domain
    cidr: str | None  # the IPv4 subnet
    gateway: str | None  # the host's address in it
    dhcp: bool
    dhcp_range: str | None  # "first-last"
    reservations: list[ReservationSpec]  # sorted by MAC
    active: NotRequired[bool]  # runtime
    autostart: NotRequired[bool]  # runtime


class PoolSpec(TypedDict):
    type: str | None  # "dir", ...
    path: str | None  # target folder
    active: NotRequired[bool]  # runtime
    autostart: NotRequired[bool]  # runtime


class VolumeSpec(TypedDict):
    format: str | None  # "qcow2", "raw", ...
    capacity: int | None  # bytes
    backing: str | None  # path of the backing file


class SnapshotSpec(TypedDict):
    memory: bool  # a full checkpoint (True) or disk-only (False)


#: A spec of any one kind.
KindSpec = VMSpec | NetworkSpec | PoolSpec | VolumeSpec | SnapshotSpec

#: The generic form, for code that handles every kind alike or a part of a spec: the planner's
#: field diff, observed objects, drift records, plan files, Pulumi outputs.
Spec = dict[str, Any]


def generic(spec: KindSpec) -> Spec:
    """`spec` itself (no copy), as the generic `Spec`. A TypedDict is a plain dict at run time;
    only the static type changes, to the one code handling every kind is written against."""
    return cast(Spec, spec)
