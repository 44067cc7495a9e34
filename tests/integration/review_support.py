"""Helpers for the review tests (saved plans, --commands, drift, locks): a CLI runner with
its own state and lock folders, and a comparison of two hosts' libvirt state."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from virtplan_lab.testbed import RECORDS_POOL

REPO = Path(__file__).resolve().parents[2]


class Cli:
    """Runs `python -m virtplan.cli` against one private host, as a user with a home folder
    of its own (another machine, as far as virtplan can tell: nothing local is shared)."""

    def __init__(self, uri: str, home: Path, cwd: Path | None = None):
        self.uri, self.home, self.cwd = uri, home, cwd
        home.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "VIRTPLAN_URI": uri,
            "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "NO_COLOR": "1",
            "COLUMNS": "200",
            "PYTHONPATH": str(REPO),
        }

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "virtplan.cli", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), env=self.env, capture_output=True, text=True, timeout=300, cwd=self.cwd)

    def __call__(self, *args: str, rc: int = 0) -> str:
        proc = self.run(*args)
        out = proc.stdout + proc.stderr
        assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
        assert "Traceback" not in out
        return out

    def stdout(self, *args: str, rc: int = 0) -> str:
        proc = self.run(*args)
        assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args), env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.cwd
        )


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


# -- comparing two hosts ------------------------------------------------------------------
def _strip(xml: str, paths: list[str]) -> str:
    root = ET.fromstring(xml)
    for path in paths:
        parent_path, _, tag = path.rpartition("/")
        parents = [root] if not parent_path else root.findall(parent_path)
        for parent in parents:
            for el in parent.findall(tag):
                parent.remove(el)
    return ET.tostring(root, encoding="unicode")


def host_state(conn: Any, root: Path, skip_volumes: re.Pattern[str]) -> dict[str, Any]:
    """Everything a host has that virtplan manages, minus what libvirt generates per host
    (UUIDs, a network bridge's random MAC, usage counters). Seed ISOs are compared by the
    files inside them (two ISO tools never write the same bytes)."""
    from virtplan.documents.seed import read_seed_iso

    state: dict[str, Any] = {}
    active = {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT):
        xml = _strip(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), ["uuid"])
        state[f"vm/{dom.name()}"] = {"xml": xml, "running": dom.name() in active, "autostart": bool(dom.autostart())}
    for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_PERSISTENT):
        xml = _strip(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE), ["uuid", "mac"])
        state[f"network/{net.name()}"] = {
            "xml": xml,
            "active": bool(net.isActive()),
            "autostart": bool(net.autostart()),
        }
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT):
        if pool.name() == RECORDS_POOL:
            continue  # virtplan's own records, which the virsh commands do not keep
        xml = _strip(pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE), ["uuid", "capacity", "allocation", "available"])
        state[f"pool/{pool.name()}"] = {
            "xml": xml,
            "active": bool(pool.isActive()),
            "autostart": bool(pool.autostart()),
        }
        if not pool.isActive():
            continue
        pool.refresh(0)
        for vol in pool.listAllVolumes():
            name = f"volume/{pool.name()}/{vol.name()}"
            if skip_volumes.search(vol.name()):
                continue
            path = root / vol.path().lstrip("/")
            if vol.name().endswith("-cidata.iso"):
                state[name] = {"seed": read_seed_iso(path.read_bytes())}
                continue
            xml = _strip(
                vol.XMLDesc(0),
                [
                    "allocation",
                    "physical",
                    "target/timestamps",
                    "target/permissions",
                    "backingStore/timestamps",
                    "backingStore/permissions",
                ],
            )
            state[name] = {"xml": xml}
    return state


def host_root(host: Any) -> Path:
    """The host's file system as its daemon sees it (its private mounts)."""
    return Path(f"/proc/{host.pid}/root")


def assert_same_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b), (
        f"objects differ: only on A {sorted(set(a) - set(b))}, only on B {sorted(set(b) - set(a))}"
    )
    for key in sorted(a):
        assert a[key] == b[key], f"{key} differs:\nA: {a[key]}\nB: {b[key]}"


def adopt_records(conn_a: Any, conn_b: Any, stack_key: str) -> None:
    """Copy A's records of the stack to B (the bookkeeping `--commands` can only describe):
    same addresses, with B's pool and object UUIDs and B's volume identities."""
    import xml.etree.ElementTree as ET

    from virtplan.documents.parse import parse_volume
    from virtplan.hosts.ledger import HostLedger, store_for
    from virtplan.plan.ownership import identity_of

    records = HostLedger(store_for(conn_a), stack_key).records()
    for address, record in records.items():
        kind, key = address.split("/", 2)[1:]
        if kind == "pool":
            record["id"] = conn_b.storagePoolLookupByName(key).UUIDString()
        elif kind in ("vm", "network"):
            obj = conn_b.lookupByName(key) if kind == "vm" else conn_b.networkLookupByName(key)
            record["id"] = obj.UUIDString()
        elif kind == "volume" and not record.get("log_of"):
            pool, _, name = key.partition("/")
            vol = conn_b.storagePoolLookupByName(pool).storageVolLookupByName(name)
            record["id"] = vol.path()
            if record.get("expect") is not None:
                record["expect"] = identity_of(dict(parse_volume(ET.fromstring(vol.XMLDesc(0)))))
    HostLedger(store_for(conn_b), stack_key).update(records)
