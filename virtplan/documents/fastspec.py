"""Desired specs computed from the model and the render contexts, without rendering.

Rendering a template and parsing it back costs about 0.2 ms per VM; a no-op plan of a
thousand VMs should not pay that. `desired_domain(vm, renderer)` and its siblings build the
same spec (`virtplan.documents.specs`) that `virtplan.documents.parse` reads from the
built-in templates' output, from the renderer's parts of the contexts those templates
consume (the same methods, not copies of their rules).
`tests/unit/test_fastspec.py` proves the two agree on every example stack; a stack that
overrides templates always takes the render-and-parse path, so its own templates take
part in diffing.
"""

from __future__ import annotations

from virtplan.documents.render import Renderer, console_log_path, volume_path
from virtplan.documents.specs import (
    DiskSpec,
    GraphicsSpec,
    NetworkSpec,
    NicSpec,
    PoolSpec,
    ReservationSpec,
    SnapshotSpec,
    Spec,
    VMSpec,
    VolumeSpec,
    generic,
)
from virtplan.model import VM, Network, Pool, Resource, Snapshot, Volume


def desired_domain(vm: VM, r: Renderer) -> VMSpec:
    """The spec of the domain XML the built-in template renders for `vm`: from the
    renderer's parts of its domain context (`Renderer.domain_context`), without the parts a
    spec does not hold (UUID, device names, the seed's view), which are a third of the time."""
    domain_type, arch, machine = r.hardware(vm)
    macs = r.macs(vm)
    graphics = None
    if vm.graphics is not None:
        graphics = GraphicsSpec(
            type=vm.graphics.type, listen=vm.graphics.listen, password=r.graphics_password_digest(vm)
        )
    return {
        "type": domain_type,
        "arch": arch,
        "machine": machine,
        "vcpus": vm.vcpus,
        "max_vcpus": vm.max_vcpus_count,
        "memory": vm.memory_bytes // 1024 * 1024,
        "max_memory": vm.max_memory_bytes // 1024 * 1024,
        "firmware": vm.firmware,
        "disks": [DiskSpec(volume=d.volume.key, device="disk", bus=d.bus, boot=d.boot or None) for d in vm.disks],
        "nics": [
            NicSpec(network=n.network.name if n.network else None, bridge=n.bridge, model=n.model, mac=macs[i])
            for i, n in enumerate(vm.nics)
        ],
        "cloud_init": r.vm_seed_digest(vm),
        "graphics": graphics,
        "serial": bool(vm.serial),
        "description": vm.description or "",
        "kernel": volume_path(vm.kernel) if vm.kernel is not None else None,
        "initrd": volume_path(vm.initrd) if vm.initrd is not None else None,
        "cmdline": vm.cmdline or None,
        "console_log": console_log_path(vm),
    }


def desired_network(net: Network, r: Renderer) -> NetworkSpec:
    """The spec of the network XML the built-in template renders for `net`."""
    n = r.network_context(net)
    bridge = net.bridge if net.mode == "bridge" else net.bridge_name
    spec: NetworkSpec = {
        "mode": net.mode,
        "bridge": bridge,
        "domain": net.domain,
        "cidr": None,
        "gateway": None,
        "dhcp": False,
        "dhcp_range": None,
        "reservations": [],
    }
    if net.cidr:
        spec["cidr"] = str(net.ip_network)
        spec["gateway"] = str(net.gateway_ip)
        if net.dhcp:
            spec["dhcp"] = True
            spec["dhcp_range"] = f"{n.range[0]}-{n.range[1]}"
            spec["reservations"] = sorted(
                (ReservationSpec(mac=x.mac.lower(), ip=x.ip, name=x.name) for x in n.reservations),
                key=lambda x: x["mac"],
            )
    return spec


def desired_pool(pool: Pool, _r: Renderer) -> PoolSpec:
    """The spec of the pool XML the built-in template renders for `pool`."""
    return {"type": pool.type, "path": pool.path}


def desired_volume(vol: Volume, r: Renderer) -> VolumeSpec:
    """The spec of the volume XML the built-in template renders for `vol`."""
    v = r.volume_context(vol)
    return {"format": v.format, "capacity": v.capacity, "backing": v.backing_path}


def desired_snapshot(snap: Snapshot, _r: Renderer | None = None) -> SnapshotSpec:
    """A snapshot has no XML of its own: its spec is what kind of snapshot it is."""
    return {"memory": bool(snap.memory)}


def desired(resource: Resource, r: Renderer) -> Spec:
    """The spec of any declared resource, in the generic form."""
    if isinstance(resource, VM):
        return generic(desired_domain(resource, r))
    if isinstance(resource, Network):
        return generic(desired_network(resource, r))
    if isinstance(resource, Pool):
        return generic(desired_pool(resource, r))
    if isinstance(resource, Volume):
        return generic(desired_volume(resource, r))
    if isinstance(resource, Snapshot):
        return generic(desired_snapshot(resource, r))
    raise TypeError(f"no spec for {resource!r}")  # pragma: no cover - the model has no other kinds


__all__ = ["desired", "desired_domain", "desired_network", "desired_pool", "desired_snapshot", "desired_volume"]
