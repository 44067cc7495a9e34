"""The raw libvirt-python floor that bench/whole_process.py times as a whole process.

Only the standard library and libvirt-python: what a hand-written script needs at least
to do what `virtplan apply`, `virtplan destroy` and a no-op `virtplan plan` do to the same
objects. The documents come from a JSON file that the benchmark writes beforehand
(virtplan's own rendering of the benchmark stack, without its ownership marks), so both
sides define exactly the same network, pool, volumes and domains.

    python bench/raw_floor.py converge SPEC.json [--threads 8]   # network, pool, then per VM
                                                                # (threads): volume, define, start
    python bench/raw_floor.py destroy SPEC.json [--threads 8]    # per VM (threads): force off,
                                                                # undefine, delete its volumes;
                                                                # then the network and the pool
    python bench/raw_floor.py read SPEC.json [--threads 8]       # list every kind, fetch every
                                                                # declared object's XML

SPEC.json: {"uri", "network": {"name", "xml"}, "pool": {"name", "xml"},
            "vms": [{"name", "xml", "volume": {"name", "xml"}, "log": "<name>-console.log"}]}
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import libvirt


def in_threads(threads: int, fn: Any, items: list[Any]) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(fn, items):
            pass


def converge(conn: Any, spec: dict[str, Any], threads: int) -> None:
    net = conn.networkDefineXML(spec["network"]["xml"])
    net.create()
    net.setAutostart(1)
    pool = conn.storagePoolDefineXML(spec["pool"]["xml"], 0)
    pool.build(0)
    pool.create(0)
    pool.setAutostart(1)

    def vm(item: dict[str, Any]) -> None:
        pool.createXML(item["volume"]["xml"], 0)
        dom = conn.defineXML(item["xml"])
        if item.get("running", True):
            dom.create()

    in_threads(threads, vm, spec["vms"])


def destroy(conn: Any, spec: dict[str, Any], threads: int) -> None:
    flags = libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA

    def vm(item: dict[str, Any]) -> None:
        dom = conn.lookupByName(item["name"])
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(flags)

    in_threads(threads, vm, spec["vms"])
    pool = conn.storagePoolLookupByName(spec["pool"]["name"])
    pool.refresh(0)  # the console logs were written by virtlogd, behind libvirt's back
    in_threads(threads, lambda vol: vol.delete(0), pool.listAllVolumes())
    net = conn.networkLookupByName(spec["network"]["name"])
    net.destroy()
    net.undefine()
    pool.destroy()
    pool.delete(0)
    pool.undefine()


def read(conn: Any, spec: dict[str, Any], threads: int) -> None:
    """List each kind once and fetch the inactive XML of every declared object."""
    declared = {item["name"] for item in spec["vms"]}
    doms = [d for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT) if d.name() in declared]
    in_threads(threads, lambda d: d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), doms)
    for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_PERSISTENT):
        if net.name() == spec["network"]["name"]:
            net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    volumes = {item["volume"]["name"] for item in spec["vms"]}
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT):
        if pool.name() == spec["pool"]["name"]:
            pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
            vols = [v for v in pool.listAllVolumes() if v.name() in volumes]
            in_threads(threads, lambda v: v.XMLDesc(0), vols)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["converge", "destroy", "read"])
    parser.add_argument("spec")
    parser.add_argument("--threads", type=int, default=8)
    options = parser.parse_args()
    with open(options.spec) as f:
        spec = json.load(f)
    conn = libvirt.open(spec["uri"])
    try:
        {"converge": converge, "destroy": destroy, "read": read}[options.action](conn, spec, options.threads)
    finally:
        conn.close()


if __name__ == "__main__":
    main()
