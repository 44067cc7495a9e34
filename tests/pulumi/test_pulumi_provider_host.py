"""The native providers called directly against a real private libvirt host.

Every provider used here went through the SDK's dill serialization and back, as Pulumi's
dynamic provider process receives it. Guests are tiny TCG VMs (64 MiB, blank disk).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dill
import libvirt
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from wire_format import wire

from virtplan.hosts.ledger import HostLedger, store_for
from virtplan.model import Stack, load_stack
from virtplan.plan.planner import PlanError
from virtplan.pulumi.describe import describe
from virtplan.pulumi.provider import VirtplanProvider
from virtplan.pulumi.session import ProviderError
from virtplan_lab.testbed import PrivateHost

MiB = 1024**2
REPO = Path(__file__).resolve().parents[2]


class Lab:
    """One test's stack on the shared private host, and its (pickled and restored) providers."""

    def __init__(self, host: PrivateHost, tmp: Path, prefix: str, subnet: int, vm: str = ""):
        self.host, self.prefix = host, prefix
        pool_dir = host.workdir / f"{prefix}-pool"
        program = tmp / f"{prefix}.py"
        program.write_text(f"""
from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume
Host("local", uri="test:///default", domain_type="qemu")
net = Network("{prefix}-net", mode="nat", cidr="10.{subnet}.0.0/24")
pool = Pool("{prefix}-pool", path={str(pool_dir)!r})
disk = Volume("{prefix}-1.qcow2", pool=pool, size="64MiB")
VM("{prefix}-1", memory="64MiB", max_memory="128MiB", disks=[disk], nics=[NIC(net, ip="10.{subnet}.0.10")],
   shutdown_timeout=0, description="pulumi test"{vm})
""")
        self.stack: Stack = load_stack(program, {"local": host.uri})
        self.inputs = {r.kind: wire(describe(r, self.stack)) for r in self.stack.managed()}
        self.addresses = {r.kind: r.address for r in self.stack.managed()}
        self.providers = {kind: restored(VirtplanProvider(kind)) for kind in self.inputs}
        self.outs: dict[str, dict[str, Any]] = {}

    def create(self, *kinds: str) -> None:
        for kind in kinds or ("network", "pool", "volume", "vm"):
            result = self.providers[kind].create(self.inputs[kind])
            assert result.id == self.addresses[kind]
            self.outs[kind] = result.outs  # type: ignore[assignment]

    def delete_all(self) -> None:
        for kind in ("vm", "volume", "pool", "network"):
            if kind in self.outs:
                self.providers[kind].delete(self.addresses[kind], self.outs[kind])

    def changed(self, kind: str, **changes: Any) -> dict[str, Any]:
        return {**json.loads(json.dumps(self.inputs[kind])), **changes}

    def virsh(self, *args: str) -> None:
        subprocess.run(["virsh", "-q", "-c", self.host.uri, *args], check=True, capture_output=True)

    def records(self) -> dict[str, Any]:
        """The stack's records as the host keeps them (any process, any machine reads the same)."""
        conn = self.host.connect()
        try:
            return HostLedger(store_for(conn), self.stack.key).records()
        finally:
            conn.close()


def restored(provider: VirtplanProvider) -> VirtplanProvider:
    """The provider as Pulumi's dynamic provider process gets it: serialized with dill, then loaded."""
    copy = dill.loads(base64.b64decode(serialize_provider(provider)))
    assert type(copy) is VirtplanProvider and vars(copy) == vars(provider)
    return copy


@pytest.fixture
def conn(private_host: PrivateHost) -> Any:
    c = private_host.connect()
    yield c
    c.close()


def test_create_adopt_read_delete(private_host: PrivateHost, tmp_path: Path, conn: Any) -> None:
    secrets = ', cloud_init=CloudInit(user="ops", password="pw-t1"), graphics=Graphics(password="vnc-t1")'
    lab = Lab(private_host, tmp_path, "t1", 121, vm=secrets)
    lab.create()
    vm, net, vol = lab.outs["vm"], lab.outs["network"], lab.outs["volume"]
    dom = conn.lookupByName("t1-1")
    assert dom.isActive() and vm["uuid"] == dom.UUIDString()
    assert vm["macAddresses"] == [n["mac"] for n in vm["observed"]["nics"]]
    assert vm["ipAddresses"] == ["10.121.0.10"]  # the reservation (no lease: the guest has no OS)
    assert vm["observed"]["memory"] == 64 * MiB and vm["observed"]["state"] == "running"
    assert vm["cloudInit"]["password"] == "pw-t1"  # echoed inputs: the engine keeps them secret
    assert vm["graphics"]["password"] == "vnc-t1"
    plain = json.dumps({k: v for k, v in vm.items() if k not in ("cloudInit", "graphics")})
    assert "pw-t1" not in plain and "vnc-t1" not in plain
    assert vm["observed"]["graphics"] == {"type": "vnc", "listen": "127.0.0.1", "password": "(sensitive)"}
    assert net["uuid"] == conn.networkLookupByName("t1-net").UUIDString()
    assert net["observed"]["reservations"] == [{"mac": vm["macAddresses"][0], "ip": "10.121.0.10", "name": "t1-1"}]
    assert vol["volumePath"] == str(private_host.workdir / "t1-pool" / "t1-1.qcow2")
    assert set(lab.records()) == {
        "local/network/t1-net", "local/pool/t1-pool", "local/volume/t1-pool/t1-1.qcow2",
        "local/volume/t1-pool/t1-1-cidata.iso", "local/volume/t1-pool/t1-1-console.log", "local/vm/t1-1",
    }  # fmt: skip

    # create again: the objects exist and are this stack's own, so they are adopted, not recreated
    again = lab.providers["vm"].create(lab.inputs["vm"])
    assert again.outs["uuid"] == vm["uuid"] and conn.lookupByName("t1-1").ID() == dom.ID()  # type: ignore[index]
    for kind in lab.outs:
        result = lab.providers[kind].diff(lab.addresses[kind], lab.outs[kind], lab.inputs[kind])
        assert (result.changes, result.replaces) == (False, []), kind
        read = lab.providers[kind].read(lab.addresses[kind], lab.outs[kind])
        assert read.id == lab.addresses[kind]
        assert read.outs == lab.outs[kind] and read.inputs == lab.inputs[kind], kind

    # inputs libvirt never sees: a new shutdown timeout is stored, a new worker count is not a change
    assert lab.providers["vm"].diff(lab.addresses["vm"], vm, lab.changed("vm", shutdownTimeout=5.0)).changes is True
    workers = lab.changed("vm")
    workers["host"]["workers"] = 9.0
    assert lab.providers["vm"].diff(lab.addresses["vm"], vm, workers).changes is False

    lab.delete_all()
    assert "t1-1" not in [d.name() for d in conn.listAllDomains()]
    assert "t1-net" not in [n.name() for n in conn.listAllNetworks()]
    assert "t1-pool" not in [p.name() for p in conn.listAllStoragePools()]
    assert lab.records() == {}
    for kind in lab.outs:
        assert lab.providers[kind].read(lab.addresses[kind], lab.outs[kind]).id == "", kind


def test_diff_and_update_live_restart_replace(private_host: PrivateHost, tmp_path: Path, conn: Any) -> None:
    lab = Lab(private_host, tmp_path, "t2", 122)
    lab.create()
    vm_p, address = lab.providers["vm"], lab.addresses["vm"]
    started = conn.lookupByName("t2-1").ID()
    try:
        live = lab.changed("vm", memory="96MiB")
        assert (lambda d: (d.changes, d.replaces, d.delete_before_replace))(vm_p.diff(address, lab.outs["vm"], live)) \
            == (True, [], True)  # fmt: skip
        outs = vm_p.update(address, lab.outs["vm"], live).outs
        dom = conn.lookupByName("t2-1")
        assert dom.ID() == started  # applied live: no restart
        assert outs["observed"]["memory"] == 96 * MiB and outs["memory"] == "96MiB"  # type: ignore[index]
        config = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        assert int(config.findtext("currentMemory") or 0) == 96 * 1024

        restart = {**live, "maxMemory": "192MiB"}
        diff = vm_p.diff(address, outs, restart)  # type: ignore[arg-type]
        assert (diff.changes, diff.replaces) == (True, [])
        outs = vm_p.update(address, outs, restart).outs  # type: ignore[arg-type]
        dom = conn.lookupByName("t2-1")
        assert dom.isActive() and dom.ID() != started  # the restart really happened
        assert outs["observed"]["max_memory"] == 192 * MiB  # type: ignore[index]

        replace = lab.changed("network", cidr="10.222.0.0/24")
        diff = lab.providers["network"].diff(lab.addresses["network"], lab.outs["network"], replace)
        assert diff.changes and "cidr" in (diff.replaces or []) and diff.delete_before_replace
        # only Pulumi replaces: neither update nor create (adopting) replaces on its own
        with pytest.raises(ProviderError, match="cidr.* changed since the preview, which forces replacement"):
            lab.providers["network"].update(lab.addresses["network"], lab.outs["network"], replace)
        with pytest.raises(ProviderError, match="owned by this stack exists and differs in cidr"):
            lab.providers["network"].create(replace)
        assert conn.networkLookupByName("t2-net").UUIDString() == lab.outs["network"]["uuid"]

        refused = lab.changed("pool", path=str(private_host.workdir / "elsewhere"))
        with pytest.raises(PlanError, match="t2-pool: path: cannot change"):
            lab.providers["pool"].diff(lab.addresses["pool"], lab.outs["pool"], refused)
    finally:
        lab.delete_all()


def test_read_shows_out_of_band_changes_and_update_converges(
    private_host: PrivateHost, tmp_path: Path, conn: Any
) -> None:
    lab = Lab(private_host, tmp_path, "t3", 123)
    lab.create()
    try:
        lab.virsh("desc", "t3-1", "--config", "--new-desc", "changed by hand")
        lab.virsh("setmem", "t3-1", "80M", "--config")
        lab.virsh("net-autostart", "t3-net", "--disable")

        vm = lab.providers["vm"].read(lab.addresses["vm"], lab.outs["vm"])
        assert vm.id == lab.addresses["vm"]
        assert vm.outs["description"] == "changed by hand" and vm.outs["memory"] == "80MiB"  # type: ignore[index]
        assert vm.outs["observed"]["memory"] == 80 * MiB  # type: ignore[index]
        assert vm.inputs["description"] == "changed by hand" and vm.inputs["memory"] == "80MiB"  # type: ignore[index]
        assert "observed" not in vm.inputs  # type: ignore[operator]
        net = lab.providers["network"].read(lab.addresses["network"], lab.outs["network"])
        assert net.outs["autostart"] is False and net.outs["observed"]["autostart"] is False  # type: ignore[index]

        # `pulumi up` after the refresh: the program's inputs win again
        diff = lab.providers["vm"].diff(lab.addresses["vm"], vm.outs, lab.inputs["vm"])  # type: ignore[arg-type]
        assert (diff.changes, diff.replaces) == (True, [])
        lab.providers["vm"].update(lab.addresses["vm"], vm.outs, lab.inputs["vm"])  # type: ignore[arg-type]
        lab.providers["network"].update(lab.addresses["network"], net.outs, lab.inputs["network"])  # type: ignore[arg-type]
        assert lab.providers["vm"].read(lab.addresses["vm"], lab.outs["vm"]).outs == lab.outs["vm"]
        assert conn.networkLookupByName("t3-net").autostart() == 1
    finally:
        lab.delete_all()


def test_missing_and_foreign_objects(private_host: PrivateHost, tmp_path: Path, conn: Any) -> None:
    lab = Lab(private_host, tmp_path, "t4", 124)
    net_p, address = lab.providers["network"], lab.addresses["network"]
    foreign_xml = (
        "<network><name>t4-net</name><bridge name='t4-foreign'/><ip address='10.224.0.1' prefix='24'/></network>"
    )
    # a foreign object with the declared name: an error naming the way out, never a takeover
    foreign = conn.networkDefineXML(foreign_xml)
    with pytest.raises(PlanError, match="a network named 't4-net' already exists .* virtplan did not create it"):
        net_p.create(lab.inputs["network"])
    assert net_p.read(address, {**lab.inputs["network"], "observed": {}}).id == ""
    net_p.delete(address, lab.inputs["network"])
    assert conn.networkLookupByName("t4-net").UUIDString() == foreign.UUIDString()  # untouched
    foreign.undefine()

    # ours removed out of band: missing; ours replaced by a foreign one: missing, and left alone
    lab.create("network")
    ours = conn.networkLookupByName("t4-net")
    ours.destroy()
    ours.undefine()
    assert net_p.read(address, lab.outs["network"]).id == ""
    foreign = conn.networkDefineXML(foreign_xml)
    assert net_p.read(address, lab.outs["network"]).id == ""
    net_p.delete(address, lab.outs["network"])
    assert conn.networkLookupByName("t4-net").UUIDString() == foreign.UUIDString()
    foreign.undefine()

    # a volume whose pool is stopped is not "missing": reading it is an error
    lab.create("pool", "volume")
    try:
        conn.storagePoolLookupByName("t4-pool").destroy()
        with pytest.raises(Exception, match="pool 't4-pool' is inactive"):
            lab.providers["volume"].read(lab.addresses["volume"], lab.outs["volume"])
        conn.storagePoolLookupByName("t4-pool").create()
        assert lab.providers["volume"].read(lab.addresses["volume"], lab.outs["volume"]).id == lab.addresses["volume"]
    finally:
        lab.delete_all()


def test_delete_removes_only_what_it_created(private_host: PrivateHost, tmp_path: Path, conn: Any) -> None:
    lab = Lab(private_host, tmp_path, "t5", 125, vm=', cloud_init=CloudInit(user="ops")')
    lab.create()
    pool = conn.storagePoolLookupByName("t5-pool")
    foreign = pool.createXML(
        "<volume><name>notes.raw</name><capacity unit='bytes'>4096</capacity>"
        "<target><format type='raw'/></target></volume>", 0
    )  # fmt: skip
    foreign_path = Path(foreign.path())

    def volumes() -> set[str]:
        pool.refresh(0)
        return set(pool.listVolumes())

    assert volumes() == {"t5-1.qcow2", "t5-1-cidata.iso", "t5-1-console.log", "notes.raw"}
    lab.providers["vm"].delete(lab.addresses["vm"], lab.outs["vm"])
    assert "t5-1" not in [d.name() for d in conn.listAllDomains()]
    # The seed and the console log went with their VM; disks are their own resources.
    assert volumes() == {"t5-1.qcow2", "notes.raw"}
    lab.providers["volume"].delete(lab.addresses["volume"], lab.outs["volume"])
    assert volumes() == {"notes.raw"}
    lab.providers["pool"].delete(lab.addresses["pool"], lab.outs["pool"])
    assert "t5-pool" not in [p.name() for p in conn.listAllStoragePools()]
    assert foreign_path.is_file()  # the pool is gone; the file it held that virtplan did not make is not
    lab.providers["network"].delete(lab.addresses["network"], lab.outs["network"])
    assert lab.records() == {}
    # deleting again is a no-op: nothing of this stack is left
    for kind in ("vm", "volume", "pool", "network"):
        lab.providers[kind].delete(lab.addresses[kind], lab.outs[kind])


def test_concurrent_calls_keep_every_ownership_record(private_host: PrivateHost, tmp_path: Path, conn: Any) -> None:
    """Pulumi calls providers in parallel: every volume created at once is recorded, so owned."""
    lab = Lab(private_host, tmp_path, "t6", 126)
    lab.create("pool")
    names = [f"t6-{i}.qcow2" for i in range(6)]
    inputs = [lab.changed("volume", name=name) for name in names]
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            outs = list(pool.map(lab.providers["volume"].create, inputs))
        assert {o.id for o in outs} == {f"local/volume/t6-pool/{n}" for n in names}
        assert {a for a in lab.records() if a.startswith("local/volume/")} == {o.id for o in outs}
        for o in outs:  # owned, so a read finds each of them
            assert lab.providers["volume"].read(o.id, o.outs).id == o.id  # type: ignore[arg-type]
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(lambda o: lab.providers["volume"].delete(o.id, o.outs), outs))
        assert set(conn.storagePoolLookupByName("t6-pool").listVolumes()) == set()
    finally:
        lab.delete_all()
    assert lab.records() == {}


def test_a_volume_others_back_onto_is_protected_from_pulumi_too(
    private_host: PrivateHost, tmp_path: Path, conn: Any
) -> None:
    """The engine's plan-time guard (base images others build on) holds for Pulumi's calls:
    neither deleting nor growing a volume that an overlay outside the stack backs onto."""
    lab = Lab(private_host, tmp_path, "t7", 127)
    lab.create("pool", "volume")
    base = lab.outs["volume"]["volumePath"]
    overlay = private_host.workdir / "t7-pool" / "someone-elses-overlay.qcow2"
    lab.virsh("vol-create-as", "t7-pool", overlay.name, "64M", "--format", "qcow2",
              "--backing-vol", base, "--backing-vol-format", "qcow2")  # fmt: skip
    try:
        with pytest.raises(PlanError, match="cannot be grown: other volumes are copy-on-write overlays on it"):
            lab.providers["volume"].update(
                lab.addresses["volume"], lab.outs["volume"], lab.changed("volume", size="128MiB")
            )
        with pytest.raises(PlanError, match="cannot be deleted: other volumes are copy-on-write overlays on it"):
            lab.providers["volume"].delete(lab.addresses["volume"], lab.outs["volume"])
        pool = conn.storagePoolLookupByName("t7-pool")
        pool.refresh(0)
        assert pool.storageVolLookupByName("t7-1.qcow2").info()[1] == 64 * MiB  # neither grown nor deleted
    finally:
        lab.virsh("vol-delete", "--pool", "t7-pool", overlay.name)
        lab.delete_all()


ELSEWHERE = """
import base64, json, sys
import dill
from pulumi.dynamic.dynamic import serialize_provider
from virtplan.pulumi.provider import VirtplanProvider
args = json.loads(sys.stdin.read())
provider = dill.loads(base64.b64decode(serialize_provider(VirtplanProvider(args["kind"]))))
if args["call"] == "read":
    result = provider.read(args["id"], args["props"])
    print(json.dumps({"id": result.id, "outs": result.outs}))
elif args["call"] == "diff":
    result = provider.diff(args["id"], args["props"], args["news"])
    print(json.dumps({"changes": result.changes}))
else:
    print(json.dumps({"outs": provider.update(args["id"], args["props"], args["news"]).outs}))
"""


def elsewhere(tmp_path: Path, who: str, **args: Any) -> dict[str, Any]:
    """A provider call from another machine's process: its own HOME and working folder."""
    home = tmp_path / f"home-{who}"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", ELSEWHERE], input=json.dumps(args), capture_output=True, text=True,
                          env=env, cwd=home, check=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_pulumi_processes_on_two_machines_see_the_same_ownership(
    private_host: PrivateHost, tmp_path: Path, conn: Any
) -> None:
    """Two teammates sharing a Pulumi backend: providers carry no local path, so a provider
    process anywhere reads ownership and baselines from the host."""
    lab = Lab(private_host, tmp_path, "t8", 128)
    lab.create()
    try:
        vm_id, vm = lab.addresses["vm"], lab.outs["vm"]
        seen = elsewhere(tmp_path, "bob", kind="vm", call="read", id=vm_id, props=vm)
        assert seen["id"] == vm_id and seen["outs"]["uuid"] == vm["uuid"]  # bob's refresh keeps it
        assert elsewhere(tmp_path, "bob", kind="vm", call="diff", id=vm_id, props=vm, news=lab.inputs["vm"]) == {
            "changes": False
        }
        news = lab.changed("vm", memory="96MiB")
        outs = elsewhere(tmp_path, "bob", kind="vm", call="update", id=vm_id, props=vm, news=news)["outs"]
        assert outs["observed"]["memory"] == 96 * MiB
        # alice, in her own process, sees bob's change as the applied state, not as drift
        mine = lab.providers["vm"].read(vm_id, outs)
        assert mine.id == vm_id and mine.outs["observed"]["memory"] == 96 * MiB  # type: ignore[index]
        assert lab.providers["vm"].diff(vm_id, outs, news).changes is False
        lab.outs["vm"] = outs
    finally:
        lab.delete_all()
