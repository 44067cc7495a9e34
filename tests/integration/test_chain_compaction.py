"""Clones and snapshots clean up after themselves: every frozen layer that nothing builds on
any more is merged back (issue 16). 20 clone/destroy cycles through `virtplan.testing`'s
`cloned_environment` (what the `virtplan_clone` fixture uses) leave the source's chains as
they were: depth 0 after each cycle, no layer files or freeze records left, the running
guest never restarted and reading the same disk from inside, the stopped VM's disks the same.
Snapshots: deleting one merges its layers (a later snapshot's state moves down with its
record, and stays revertable); a memory snapshot keeps the file it lives in."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest
from clone_support import base_image, in_host, write

from virtplan.engine import Engine
from virtplan.hosts.chains import chain_of
from virtplan.model import load_stack
from virtplan.testing import cloned_environment
from virtplan.workflows import snapshots

STACK = """
from virtplan import VM, Host, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
pool = Pool("cc-pool", path="/var/lib/libvirt/images/cc")
boot = Pool("cc-boot", path="/var/lib/libvirt/images/cc-boot")
VM("run", memory="128MiB", disks=[Volume("run.qcow2", pool=pool, source={image!r})], shutdown_timeout=0,
   kernel=Volume("vmlinuz", pool=boot, source={kernel!r}, format="raw"),
   initrd=Volume("initrd.img", pool=boot, source={initrd!r}, format="raw"), cmdline={cmdline!r})
VM("off", memory="64MiB", state="stopped", shutdown_timeout=0,
   disks=[Volume("off.qcow2", pool=pool, source={image!r}), Volume("off-data.raw", pool=pool, size="8MiB", format="raw")])
"""
DISKS = ("run.qcow2", "off.qcow2", "off-data.raw")
FIRST_MIB = hashlib.sha256(bytes([0x11]) * (1 << 20)).hexdigest()  # what base_image writes


def guest(conn, vm: str, command: str, timeout: float = 60.0) -> str:
    """Run `command` in the probe guest's console shell; its output ("" if no answer)."""
    marker = f"END{time.monotonic_ns()}"
    stream = conn.newStream(0)
    conn.lookupByName(vm).openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    out = bytearray()
    seen = threading.Event()

    def read() -> None:
        try:
            while not seen.is_set():
                got = stream.recv(4096)
                if not isinstance(got, bytes) or not got:
                    return
                out.extend(got)
                if f"\n{marker}".encode() in out.replace(b"\r", b""):
                    seen.set()
        except libvirt.libvirtError:
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    stream.send(f"{command}; echo {marker}\r".encode())
    seen.wait(timeout)
    with contextlib.suppress(libvirt.libvirtError):
        stream.abort()
    text = out.decode(errors="replace").replace("\r", "")
    return text.split(f"echo {marker}", 1)[-1].split(marker)[0].strip() if seen.is_set() else ""


def view(env, vm: str) -> str:
    """sha256 of what each of the VM's disks holds, read through its chain on the host."""
    root = ET.fromstring(env.conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    sums = []
    for disk in root.iterfind("devices/disk[@device='disk']"):
        source = disk.find("source")
        path = source.get("file") or f"/var/lib/libvirt/images/cc/{source.get('volume')}"
        raw = f"/tmp/cc-view-{time.monotonic_ns()}.raw"
        in_host(env.host, "qemu-img", "convert", "-U", "-O", "raw", path, raw)
        sums.append(in_host(env.host, "sha256sum", raw).split()[0])
        in_host(env.host, "rm", "-f", raw)
    return ",".join(sums)


def depth(env) -> dict[str, int]:
    uri = env.host.uri
    env.store.ledger(uri).reload()  # other engines (the clone's) wrote meanwhile
    return {d: len(chain_of(env.store, uri, f"h/volume/cc-pool/{d}")) for d in DISKS}


@pytest.fixture(scope="module")
def env(private_host, probe_image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compact")
    stack = tmp / "cc.py"
    stack.write_text(STACK.format(image=str(base_image(tmp, size="32M")), kernel=str(probe_image.kernel),
                                  initrd=str(probe_image.initrd), cmdline=probe_image.cmdline))  # fmt: skip
    hosts = {"h": private_host.uri}
    engine = Engine(load_stack(stack, hosts))
    plan, observation = engine.plan()
    engine.apply(plan, observation)
    conn = private_host.connect()
    e = SimpleNamespace(host=private_host, conn=conn, stack=stack, hosts=hosts, engine=engine, store=engine.store)
    write(private_host, "/var/lib/libvirt/images/cc/off-data.raw", 0x22)
    deadline = time.monotonic() + 90
    while "ok" not in guest(conn, "run", "echo o''k", timeout=5) and time.monotonic() < deadline:
        time.sleep(1)
    yield e
    engine.close()
    conn.close()


def volumes(env) -> set[str]:
    pool = env.conn.storagePoolLookupByName("cc-pool")
    pool.refresh(0)
    return {v for v in pool.listVolumes() if not v.endswith("-console.log")}  # a paused start opens the log


def test_twenty_clone_and_destroy_cycles_leave_the_chains_as_they_were(env):
    run_id = env.conn.lookupByName("run").ID()
    before = {"run": guest(env.conn, "run", "dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum"),
              "off": view(env, "off"), "volumes": volumes(env)}  # fmt: skip
    assert FIRST_MIB in before["run"], "the guest reads its disk"
    for n in range(20):
        with cloned_environment(env.stack, name=f"cc{n}", hosts=env.hosts, state="stopped") as clone:
            assert depth(env) == dict.fromkeys(DISKS, 1), f"cycle {n}: one frozen layer while the clone lives"
            assert clone.vm("run").state == "stopped"
        assert depth(env) == dict.fromkeys(DISKS, 0), f"cycle {n}: the layer was merged back"
        assert volumes(env) == before["volumes"], f"cycle {n}: no layer files left"
        records = env.store.records(env.host.uri)
        assert not [a for a, r in records.items() if r.get("kind") == "freeze" or r.get("layer_of")], records
    run = env.conn.lookupByName("run")
    assert run.isActive() and run.ID() == run_id, "the running guest was never restarted"
    assert not env.conn.lookupByName("off").isActive(), "the stopped VM stays stopped"
    assert guest(env.conn, "run", "dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum") == before["run"]
    assert view(env, "off") == before["off"]
    xml = run.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "backingStore type='file'" not in xml and "<source pool='cc-pool' volume='run.qcow2'/>" in xml
    plan, _ = env.engine.plan()
    assert plan.empty, plan.changes


def test_deleting_snapshots_merges_their_layers_and_keeps_later_ones_revertable(env):
    write(env.host, "/var/lib/libvirt/images/cc/off-data.raw", 0x33, offset=1 << 20)
    snapshots.create_all(env.engine, "s1", ["off"])
    snapshots.create_all(env.engine, "s2", ["off"])
    assert depth(env)["off.qcow2"] == 2
    at_s2 = view(env, "off")
    snapshots.delete_all(env.engine, "s1", ["off"])
    assert depth(env)["off.qcow2"] == 1, "s1's layer merged down; s2's state moved with it"
    record = env.store.get(env.host.uri, "h/snapshot/off/s2")
    assert set(record["disks"].values()) == {"/var/lib/libvirt/images/cc/off.qcow2",
                                              "/var/lib/libvirt/images/cc/off-data.raw"}  # fmt: skip
    top = chain_of(env.store, env.host.uri, "h/volume/cc-pool/off-data.raw")[0]
    write(env.host, top, 0x44, offset=1 << 20)
    assert view(env, "off") != at_s2
    snapshots.revert_all(env.engine, "s2", ["off"])
    assert view(env, "off") == at_s2, "s2 is still the state it was"
    snapshots.delete_all(env.engine, "s2", ["off"])
    assert depth(env)["off.qcow2"] == 0 and depth(env)["off-data.raw"] == 0
    assert not [s for s in snapshots.list_all(env.engine) if s.vm == "off"]
    assert view(env, "off") == at_s2


def test_a_memory_snapshot_keeps_the_file_it_lives_in(env):
    snapshots.create_all(env.engine, "m", ["run"], memory=True)
    with cloned_environment(env.stack, name="ccm", hosts=env.hosts, state="stopped"):
        pass
    assert depth(env)["run.qcow2"] == 1, "run.qcow2 holds the memory snapshot: not written into"
    snapshots.delete_all(env.engine, "m", ["run"])
    assert depth(env)["run.qcow2"] == 0, "merged once the memory snapshot is gone"
    assert FIRST_MIB in guest(env.conn, "run", "dd if=/dev/vda bs=1M count=1 2>/dev/null | sha256sum")
