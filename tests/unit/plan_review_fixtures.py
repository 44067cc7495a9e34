"""Plans of every kind for the review tests (plan files, Markdown, graph, virsh commands),
computed by the real planner from a deployed stack and an edited one. No libvirt."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from builders import QEMU_FACTS, declare

from virtplan.documents.parse import owner_of, parse
from virtplan.documents.render import Renderer, volume_path
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import StateStore
from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Stack, Volume, validate
from virtplan.plan.planner import Plan, make_plan

URI = "test:///default"
PASSWORD = "hunter2-very-secret"
VNC_PASSWORD = "vnc-s3cr"


def lab(edited: bool = False, password: str = PASSWORD) -> Stack:
    """The reference stack; `edited` is the same stack after a typical pull request: a live
    memory change (web1), a restart (db), a volume grown and one replaced (new format), a
    new VM with a reservation, a removed VM, and a network replaced (new subnet)."""
    with declare("lab") as stack:
        Host("kvm1", URI, domain_type="qemu")
        net = Network("lab-net", cidr="10.20.0.0/24", domain="lab.test")
        Network("back-net", mode="isolated", cidr="10.30.0.0/24" if not edited else "10.31.0.0/24", dhcp=False)
        pool = Pool("lab-pool", path="/var/lib/virtplan/lab")
        base = Volume("base.qcow2", pool=pool, size="1GiB")
        web_root = Volume("web1.qcow2", pool=pool, backing=base)
        data = Volume("data.raw", pool=pool, size="2GiB" if not edited else "3GiB", format="raw")
        Volume("scratch", pool=pool, size="1GiB", format="raw" if not edited else "qcow2")
        VM(
            "web1",
            vcpus=1,
            max_vcpus=2,
            memory="512MiB" if not edited else "768MiB",
            max_memory="1GiB",
            disks=[Disk(web_root, boot=1)],
            nics=[NIC(net, ip="10.20.0.11", mac="52:54:00:aa:00:01")],
            cloud_init=CloudInit(user="ops", password=password),
            graphics=Graphics("vnc", password=VNC_PASSWORD),
            description='web <1> & "friends" | *all*',
            shutdown_timeout=5,
        )
        VM(
            "db",
            memory="1GiB",
            max_memory="1GiB" if not edited else "2GiB",
            disks=[Volume("db.qcow2", pool=pool, size="4GiB"), data],
            nics=[NIC(net, mac="52:54:00:aa:00:02")],
            shutdown_timeout=5,
        )
        if not edited:
            VM("old", memory="256MiB", disks=[Volume("old.qcow2", pool=pool, size="1GiB")],
               nics=[NIC(net, mac="52:54:00:aa:00:03")], shutdown_timeout=5)  # fmt: skip
        else:
            VM("cache", memory="256MiB", nics=[NIC(net, mac="52:54:00:aa:00:04", ip="10.20.0.40")], state="stopped")
    validate(stack)
    return stack


def deployed(stack: Stack, store: StateStore, running: bool = True) -> HostState:
    """Observed state exactly as if `stack` had been applied (VMs running)."""
    r = Renderer(stack, {"kvm1": QEMU_FACTS})
    host = HostState("kvm1", URI, QEMU_FACTS)
    for net in stack.networks:
        xml = r.network_xml(net)
        spec = parse("network", xml) | {"active": True, "autostart": net.autostart}
        host.objects[("network", net.name)] = ObservedObject(
            "network", net.name, "u-" + net.name, xml, spec, owner_of(ET.fromstring(xml))
        )
        store.put(URI, net.address, kind="network", id="u-" + net.name, pending=False, applied=spec)
    for pool in stack.pools:
        spec = parse("pool", r.pool_xml(pool)) | {"active": True, "autostart": True}
        host.objects[("pool", pool.name)] = ObservedObject("pool", pool.name, "u-" + pool.name, "", spec)
        store.put(URI, pool.address, kind="pool", id="u-" + pool.name, pending=False, applied=spec)
    for vol in stack.volumes:
        xml = r.volume_xml(vol)
        spec = parse("volume", xml)
        host.objects[("volume", vol.key)] = ObservedObject("volume", vol.key, volume_path(vol), xml, spec)
        store.put(URI, vol.address, kind="volume", id=volume_path(vol), pending=False, applied=spec)
    for vm in stack.vms:
        xml = r.domain_xml(vm)
        spec = parse("vm", xml) | {"state": "running" if running else "stopped", "autostart": vm.autostart}
        host.objects[("vm", vm.name)] = ObservedObject("vm", vm.name, "u-" + vm.name, xml, spec,
                                                       owner_of(ET.fromstring(xml)))  # fmt: skip
        store.put(URI, vm.address, kind="vm", id="u-" + vm.name, pending=False, applied=spec)
    return host


def renderer_for(stack: Stack, host: HostState) -> Renderer:
    from virtplan.documents.render import Identity

    identities = {}
    for obj in host.objects.values():
        if obj.kind in ("vm", "network"):
            identities[f"kvm1/{obj.kind}/{obj.key}"] = Identity(obj.uuid, [n["mac"] for n in obj.spec.get("nics", [])])
    return Renderer(stack, {"kvm1": QEMU_FACTS}, identities)


def scenario(tmp_path: Path, kind: str) -> tuple[Stack, Plan, dict[str, HostState], StateStore, Renderer]:
    """kind: "create" (empty host), "change" (the edited stack over the deployed one, with
    one out-of-band change), "none" (nothing to do)."""
    store = StateStore(tmp_path / f"{kind}.json", "lab")
    if kind == "create":
        host = HostState("kvm1", URI, QEMU_FACTS)
        stack = lab()
    else:
        host = deployed(lab(), store)
        stack = lab(edited=(kind == "change"))
        if kind == "change":
            # out of band: someone shrank web1's memory in its definition
            host.objects[("vm", "web1")].spec["memory"] = 384 * 1024**2
    observed = {"kvm1": host}
    renderer = renderer_for(stack, host)
    return stack, make_plan(stack, renderer, observed, store), observed, store, renderer


def fixed(doc: dict[str, Any]) -> dict[str, Any]:
    """A plan document with its per-run fields (time, salt) pinned, for golden files."""
    doc = dict(doc)
    doc["created_at"] = "2025-01-01T00:00:00Z"
    doc["secrets"] = {**doc["secrets"], "salt": "00" * 16}
    return doc
