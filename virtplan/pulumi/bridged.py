"""The pulumi-libvirt backend: the same stack program emitted as `pulumi_libvirt` resources.

`pulumi-libvirt` 0.5.4 bridges terraform-provider-libvirt 0.8.1 and is deprecated upstream.
That provider renders its own XML, so what virtplan adds on top of libvirt does not carry
over: no ownership marks (the virtplan CLI sees these objects as foreign), no template
overrides for libvirt XML, no field policies (the bridged provider decides what replaces).

Every declared feature the bridged provider cannot express is reported, all at once, before
anything is registered; nothing is dropped silently. What maps: one `Provider` per host
URI; `Network` (mode, CIDR, bridge, domain, DHCP on/off, autostart), `Pool` (dir),
`Volume` (blank, overlay via `base_volume_id`, image via `source`), `CloudInitDisk` (seed
files rendered by virtplan's own templates) and `Domain` (type, vCPUs, memory, arch,
machine, description, autostart, running, disks, NICs with virtplan's MACs and fixed IPs,
graphics, serial console).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi

from virtplan.documents.render import Renderer, console_log_path, template_dirs
from virtplan.errors import VirtplanError
from virtplan.model import VM, Network, Pool, Secret, Stack, Volume
from virtplan.plan.planner import ordered
from virtplan.pulumi.describe import pulumi_name
from virtplan.pulumi.outputs import has_placeholder
from virtplan.pulumi.settings import Registered

MiB = 1024**2
XML_TEMPLATES = ("domain.xml.j2", "network.xml.j2", "pool.xml.j2", "volume.xml.j2")
_MODES = {"nat": "nat", "route": "route", "isolated": "none", "bridge": "bridge"}


def unsupported(stack: Stack) -> list[str]:
    """Every declared feature of `stack` the pulumi-libvirt backend cannot express."""
    problems: list[str] = []
    if stack.template_dir is not None:
        dirs = template_dirs(stack.template_dir)[:1]
        overridden = [t for t in XML_TEMPLATES if any((Path(d) / t).is_file() for d in dirs)]
        if overridden:
            problems.append(
                f"stack: template overrides for {', '.join(overridden)} (the bridged provider renders its own XML)"
            )
    for net in stack.networks:
        if net.gateway and net.cidr and str(net.gateway_ip) != str(next(net.ip_network.hosts())):
            problems.append(
                f"{net.address}: gateway {net.gateway} (the bridged provider always uses the first address)"
            )
        if net.dhcp_range:
            problems.append(f"{net.address}: dhcp_range (the bridged provider hands out its own range)")
    for pool in stack.pools:
        if not pool.autostart:
            problems.append(f"{pool.address}: autostart=False (the bridged provider always autostarts pools)")
    for vol in stack.volumes:
        if isinstance(vol.backing, str) or vol.copy_of is not None:
            problems.append(f"{vol.address}: an image path as backing= or copy_of= (the bridged provider "
                            "knows only its own volumes; use the native backend)")  # fmt: skip
        if vol.source is not None and vol.size is not None:
            problems.append(f"{vol.address}: size together with source (the bridged provider cannot resize an image)")
    for vm in stack.vms:
        problems += _vm_problems(vm)
    return problems


def _vm_problems(vm: VM) -> list[str]:
    where = vm.address
    found = []
    if vm.max_memory is not None and vm.max_memory_bytes != vm.memory_bytes:
        found.append(f"{where}: max_memory (no memory ceiling above the current size; drop max_memory)")
    if vm.max_vcpus is not None and vm.max_vcpus != vm.vcpus:
        found.append(f"{where}: max_vcpus (no vCPU ceiling above the current count; drop max_vcpus)")
    if vm.memory_bytes % MiB:
        found.append(f"{where}: memory {vm.memory} (the bridged provider takes whole MiB)")
    if vm.firmware != "bios":
        found.append(f"{where}: firmware={vm.firmware!r} (the bridged provider wants a firmware file path)")
    for i, disk in enumerate(vm.disks):
        if disk.bus not in ("virtio", "scsi"):
            found.append(f"{where}: disks[{i}].bus={disk.bus!r} (only virtio and scsi)")
        if disk.boot is not None:
            found.append(f"{where}: disks[{i}].boot (no per-disk boot order)")
        if disk.target is not None:
            found.append(f"{where}: disks[{i}].target (no explicit device names)")
    for i, nic in enumerate(vm.nics):
        if nic.model != "virtio":
            found.append(f"{where}: nics[{i}].model={nic.model!r} (only virtio)")
    if vm.graphics is not None and vm.graphics.password is not None:
        found.append(f"{where}: graphics.password (no console password)")
    if console_log_path(vm) is not None:
        found.append(f"{where}: console_log (no serial log file; set console_log=False for this backend)")
    ci = vm.cloud_init
    if ci is not None:
        texts = [ci.document("user_data"), ci.document("meta_data"), ci.document("network_config"), ci.hostname,
                 ci.user, *ci.ssh_keys, *ci.packages]  # fmt: skip
        texts.append(ci.password.reveal() if isinstance(ci.password, Secret) else ci.password)
        if has_placeholder(texts):
            found.append(f"{where}: cloud_init with text() values (this backend renders seeds before they are known)")
    return found


def register_bridged(stack: Stack) -> Registered:
    """Register `stack` as pulumi_libvirt resources, or raise listing what cannot be expressed."""
    import pulumi_libvirt as libvirt

    problems = unsupported(stack)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise VirtplanError(
            f"the pulumi-libvirt backend cannot express {len(problems)} declared feature(s) of stack "
            f"{stack.name!r}; nothing was registered. Change the stack or use virtplan:backend=native:\n{lines}"
        )
    renderer = Renderer(stack, {})  # MACs and cloud-init seeds need no host facts
    providers = {h.name: libvirt.Provider(h.name, uri=h.uri) for h in stack.hosts}
    resources: dict[str, pulumi.Resource] = {}
    outputs: dict[str, Any] = {"vms": {}}
    for resource in ordered(stack.managed()):
        assert resource.host is not None
        opts = pulumi.ResourceOptions(
            provider=providers[resource.host.name],
            depends_on=[resources[d.address] for d in resource.dependencies()],
            delete_before_replace=True,
        )
        name = pulumi_name(resource)
        if isinstance(resource, Network):
            resources[resource.address] = _network(libvirt, name, resource, opts)
        elif isinstance(resource, Pool):
            resources[resource.address] = libvirt.Pool(
                name, name=resource.name, type=resource.type,
                target=libvirt.PoolTargetArgs(path=str(resource.path)), opts=opts,
            )  # fmt: skip
        elif isinstance(resource, Volume):
            resources[resource.address] = _volume(libvirt, name, resource, resources, opts)
        elif isinstance(resource, VM):
            domain = _domain(libvirt, name, resource, resources, renderer, opts)
            resources[resource.address] = domain
            outputs["vms"][name] = {
                "uuid": domain.id,
                "macAddresses": domain.network_interfaces.apply(lambda nics: [n.mac for n in nics or []]),
                "ipAddresses": domain.network_interfaces.apply(
                    lambda nics: [(n.addresses or [None])[0] for n in nics or []]
                ),
            }
    return Registered(stack, resources, outputs)


def _network(libvirt: Any, name: str, net: Network, opts: pulumi.ResourceOptions) -> Any:
    args: dict[str, Any] = {
        "name": net.name,
        "mode": _MODES[net.mode],
        "bridge": net.bridge if net.mode == "bridge" else net.bridge_name,
        "autostart": net.autostart,
    }
    if net.cidr:
        args["addresses"] = [net.cidr]
        args["dhcp"] = libvirt.NetworkDhcpArgs(enabled=net.dhcp)
    if net.domain:
        args["domain"] = net.domain
    return libvirt.Network(name, opts=opts, **args)


def _volume(libvirt: Any, name: str, vol: Volume, done: dict[str, Any], opts: pulumi.ResourceOptions) -> Any:
    assert vol.pool is not None
    args: dict[str, Any] = {"name": vol.name, "pool": vol.pool.name, "format": vol.format}
    if isinstance(vol.backing, Volume):
        args["base_volume_id"] = done[vol.backing.address].id
    if vol.source is not None:
        args["source"] = str(Path(vol.source).absolute())
    if vol.size is not None or (vol.backing is None and vol.source is None):
        args["size"] = vol.size_bytes
    return libvirt.Volume(name, opts=opts, **args)


def _domain(
    libvirt: Any, name: str, vm: VM, done: dict[str, Any], renderer: Renderer, opts: pulumi.ResourceOptions
) -> Any:
    assert vm.host is not None
    args: dict[str, Any] = {
        "name": vm.name,
        "vcpu": vm.vcpus,
        "memory": vm.memory_bytes // MiB,
        "description": vm.description or None,
        "autostart": vm.autostart,
        "running": vm.state == "running",
        "disks": [
            libvirt.DomainDiskArgs(volume_id=done[d.volume.address].id, scsi=True if d.bus == "scsi" else None)
            for d in vm.disks
        ],
        "network_interfaces": [_nic(libvirt, vm, i, mac, done) for i, mac in enumerate(renderer.macs(vm))],
    }
    for key, value in (("type", vm.host.domain_type), ("arch", vm.arch), ("machine", vm.machine)):
        if value:
            args[key] = value
    if vm.serial:
        args["consoles"] = [libvirt.DomainConsoleArgs(type="pty", target_port="0", target_type="serial")]
    if vm.kernel is not None:
        args["kernel"] = done[vm.kernel.address].id
    if vm.initrd is not None:
        args["initrd"] = done[vm.initrd.address].id
    if vm.cmdline:
        args["cmdlines"] = [cmdline_arg(word) for word in vm.cmdline.split()]
    if vm.graphics is not None:
        args["graphics"] = libvirt.DomainGraphicsArgs(
            type=vm.graphics.type, listen_type="address", listen_address=vm.graphics.listen, autoport=True
        )
    if vm.cloud_init is not None and vm.seed_pool is not None:
        files = renderer.seed_files(vm)
        seed = libvirt.CloudInitDisk(
            f"{vm.host.name}/{vm.seed_pool.name}/{vm.seed_volume_name}",
            name=vm.seed_volume_name,
            pool=vm.seed_pool.name,
            user_data=pulumi.Output.secret(files["user-data"]),
            meta_data=files["meta-data"],
            network_config=files.get("network-config"),
            opts=pulumi.ResourceOptions(
                provider=opts.provider, depends_on=[done[vm.seed_pool.address]], delete_before_replace=True
            ),
        )
        args["cloudinit"] = seed.id
    return libvirt.Domain(name, opts=opts, **args)


def cmdline_arg(word: str) -> dict[str, str]:
    """One kernel argument as terraform-provider-libvirt takes it: {key: value}, or {"_": flag}."""
    key, sep, value = word.partition("=")
    return {key: value} if sep else {"_": word}


def _nic(libvirt: Any, vm: VM, i: int, mac: str, done: dict[str, Any]) -> Any:
    nic = vm.nics[i]
    if nic.network is None:
        return libvirt.DomainNetworkInterfaceArgs(bridge=nic.bridge, mac=mac)
    fixed = {"addresses": [nic.ip], "hostname": vm.name} if nic.ip else {}
    return libvirt.DomainNetworkInterfaceArgs(network_id=done[nic.network.address].id, mac=mac, **fixed)
