"""The clone's stack program: the design written as a readable Python stack file.

The declarations are written by the one code writer (`virtplan.workflows.codegen`) from
model objects: a clone VM is the source VM's own constructor arguments with the clone's
name, host, disks, NICs and state, so every VM setting the source declares is carried
over, including ones added to `VM` later. What must not be copied into the text (cloud-init
settings and graphics passwords, which may hold secrets) is read from the source program
when the clone's program runs (`SOURCE = source_stack(...)`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.workflows.clone.design import Design, VMDesign, VolumeDesign
from virtplan.workflows.clone.options import CloneOptions
from virtplan.workflows.codegen import Code, Writer, arguments, docstring, identifier, import_line, literal

if TYPE_CHECKING:
    from virtplan.model import VM, Host, Network, Pool, Stack, Volume


def clone_program(src: Stack, d: Design, opts: CloneOptions, uris: dict[str, str], out: Path, mode: str,
            made: str) -> str:  # fmt: skip
    """The clone's stack program, to be written at `out` (the source is found relative to it)."""
    from virtplan.model import Stack, collecting

    assert src.path is not None
    rel = os.path.relpath(src.path, out.parent)
    with collecting(Stack(f"{opts.name}-program")):  # the objects below join no stack being loaded
        body = _declarations(src, d, opts, uris, w := Writer())
    uses_source = any(v.source.cloud_init is not None or _secret_graphics(v.source) for v in d.vms)
    names = sorted(w.used) + (["use_templates"] if src.template_dir is not None else [])
    lines = [docstring(_header(src, d, opts, rel, mode, made)), "", import_line(names)]
    if uses_source:
        lines.append("from virtplan.workflows.clone import source_stack")
    lines.append("")
    if uses_source:
        lines.append(f"SOURCE = source_stack({literal(rel)})  # cloud-init settings (and secrets) come from the source")
    if src.template_dir is not None:
        lines.append(
            f"use_templates({literal(os.path.relpath(src.template_dir, out.parent))})  # the source's templates"
        )
    return "\n".join([*lines, "", *body]) + "\n"


def _header(src: Stack, d: Design, opts: CloneOptions, rel: str, mode: str, made: str) -> list[str]:
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
    if d.nets:
        shown = "; ".join(f"{n.source} -> {n.name}" + (f" {n.cidr}" if n.cidr else "") for n in d.nets)
        header.append(f"- Networks are {isolated}: {shown}.")
    else:
        header.append("- No networks.")
    return [
        *header,
        "- Cloud-init identity is regenerated (hostname, instance-id); the rest comes from the source",
        "  program, so its secrets stay there.",
        "",
        "Edit it like any stack. `virtplan destroy` on this file removes the clone and nothing else:",
        "the frozen source files belong to the source stack, which keeps them while clones use them.",
    ]


def _declarations(src: Stack, d: Design, opts: CloneOptions, uris: dict[str, str], w: Writer) -> list[str]:
    """Hosts, networks, pools, then each VM after its volumes."""
    from virtplan.model import Host, Network, Pool

    lines: list[str] = []
    taken = {"SOURCE", *(n.var for n in d.nets), *(p.var for p in d.pools)}
    hosts: dict[str, Host] = {}
    for h in d.hosts:
        hosts[h] = Host(**{**arguments(src.host(h)), "uri": uris[h]})
        lines.append(w.declare(hosts[h], identifier(h, taken)))
    lines.append("")
    nets: dict[str, Network] = {}
    for n in d.nets:
        nets[n.var] = Network(n.name, host=hosts[n.host], mode=n.mode, cidr=n.cidr, gateway=n.gateway,
                              dhcp=n.dhcp, dhcp_range=n.dhcp_range, domain=n.domain, autostart=n.autostart,
                              bridge=n.bridge)  # fmt: skip
        lines += [f"# was {n.source}", w.declare(nets[n.var], n.var)]
    pools: dict[str, Pool] = {}
    for p in d.pools:
        pools[p.var] = Pool(p.name, host=hosts[p.host], path=p.path)
        lines.append(w.declare(pools[p.var], p.var))
    for v in d.vms:
        lines += ["", *_vm(v, hosts[v.host], nets, pools, opts, taken, w)]
    return lines


def _vm(v: VMDesign, host: Host, nets: dict[str, Network], pools: dict[str, Pool], opts: CloneOptions,
        taken: set[str], w: Writer) -> list[str]:  # fmt: skip
    """A clone VM: its volumes, then the VM, with the source's settings and the clone's parts."""
    from virtplan.model import NIC, VM, Disk

    vm = v.source
    lines = [f"# {vm.address}"]
    disks = []
    for disk in v.disks:
        var = identifier(re.sub(r"\.(qcow2|raw|img)$", "", disk.source_volume.partition("/")[2]) + "_disk", taken)
        volume = _volume(disk.volume, pools)
        lines.append(w.declare(volume, var))
        disks.append(Disk(volume, bus=disk.bus, boot=disk.boot, target=disk.target))
    boot: dict[str, Volume | None] = {"kernel": None, "initrd": None}
    for name in boot:
        design: VolumeDesign | None = getattr(v, name)
        if design is not None:
            boot[name] = volume = _volume(design, pools)
            lines.append(w.declare(volume, identifier(f"{vm.name}_{name}", taken)))
    nics = [NIC(nets[n.network] if n.network else None, bridge=n.bridge, model=n.model, ip=n.ip) for n in v.nics]
    clone = VM(**{**arguments(vm), "name": v.name, "host": host, "disks": disks, "nics": nics,
                  "state": opts.state or vm.state, **boot})  # fmt: skip
    source: dict[str, Code] = {}  # what the program reads from the source program instead
    if vm.cloud_init is not None:
        hostname = f"{opts.name}-{vm.cloud_init.hostname or vm.name}"
        source["cloud_init"] = Code(f"SOURCE.cloud_init({literal(vm.name)}, hostname={literal(hostname)}, "
                                    f"instance_id={literal('iid-' + v.name)})")  # fmt: skip
    if _secret_graphics(vm):
        source["graphics"] = Code(f"SOURCE.vm({literal(vm.name)}).graphics")
    return [*lines, w.declare(clone, **source)]


def _volume(v: VolumeDesign, pools: dict[str, Pool]) -> Volume:
    from virtplan.model import Volume

    return Volume(v.name, pool=pools[v.pool], size=v.size, format=v.format, backing=v.backing,
                  backing_format=v.backing_format, copy_of=v.copy_of, source=v.source)  # fmt: skip


def _secret_graphics(vm: VM) -> bool:
    return vm.graphics is not None and vm.graphics.password is not None
