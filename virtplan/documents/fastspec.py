"""Comparable specs computed straight from the render contexts, without rendering.

Rendering a template and parsing it back costs about 0.2 ms per VM; a no-op plan of a
thousand VMs should not pay that. These functions build the same dict the parsers in
`virtplan.documents.parse` produce from the built-in templates' output, from the very context
objects those templates consume. `tests/unit/test_fastspec.py` proves the two agree on
every example stack; a stack that overrides templates always takes the render-and-parse
path, so its own templates take part in diffing.
"""

from __future__ import annotations

from virtplan.documents.parse import Spec
from virtplan.documents.render import Renderer, volume_path
from virtplan.model import VM, Network, Pool, Snapshot, Volume


def domain_spec(vm: VM, r: Renderer) -> Spec:
    d = r.domain_context(vm)
    graphics = None
    if vm.graphics is not None:
        graphics = {"type": vm.graphics.type, "listen": vm.graphics.listen, "password": d.graphics_password_digest}
    return {
        "type": d.type,
        "arch": d.arch,
        "machine": d.machine,
        "vcpus": vm.vcpus,
        "max_vcpus": vm.max_vcpus_count,
        "memory": vm.memory_bytes // 1024 * 1024,
        "max_memory": vm.max_memory_bytes // 1024 * 1024,
        "firmware": vm.firmware,
        "disks": [
            {"volume": f"{disk.pool}/{disk.volume}", "device": "disk", "bus": disk.bus, "boot": disk.boot or None}
            for disk in d.disks
        ],
        "nics": [{"network": n.network, "bridge": n.bridge, "model": n.model, "mac": n.mac} for n in d.nics],
        "cloud_init": d.seed_digest,
        "graphics": graphics,
        "serial": bool(vm.serial),
        "description": vm.description or "",
        "kernel": d.kernel,
        "initrd": d.initrd,
        "cmdline": vm.cmdline or None,
        "console_log": d.console_log,
    }


def network_spec(net: Network, r: Renderer) -> Spec:
    n = r.network_context(net)
    bridge = net.bridge if net.mode == "bridge" else net.bridge_name
    spec: Spec = {
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
                ({"mac": x.mac.lower(), "ip": x.ip, "name": x.name} for x in n.reservations), key=lambda x: x["mac"]
            )
    return spec


def pool_spec(pool: Pool, _r: Renderer) -> Spec:
    return {"type": pool.type, "path": pool.path}


def volume_spec(vol: Volume, r: Renderer) -> Spec:
    v = r.volume_context(vol)
    return {"format": v.format, "capacity": v.capacity, "backing": v.backing_path}


def snapshot_spec(snap: Snapshot, _r: Renderer) -> Spec:
    return snap.spec()


__all__ = ["domain_spec", "network_spec", "pool_spec", "snapshot_spec", "volume_path", "volume_spec"]
