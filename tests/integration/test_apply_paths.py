"""Apply paths against a real private host: hot-plug, reservation updates, volume growth,
UEFI and VNC guests, pool directories, failures and crashes that later converge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import libvirt
import pytest

from virtplan.engine import Engine
from virtplan.errors import ApplyError
from virtplan.model import load_stack
from virtplan.plan.planner import Action

SUBNETS = {"paths": 61, "uefi": 62, "pools": 63, "fail": 64, "crash": 65, "modes": 66, "stopped": 69}


def header(name: str) -> str:
    """Each test stack gets its own network and pool (one stack cannot take another's)."""
    return f"""
from virtplan import NIC, VM, Disk, Graphics, Host, Network, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
net = Network("{name}-net", cidr="10.{SUBNETS[name]}.0.0/24")
pool = Pool("{name}-pool", path="/var/lib/libvirt/images/{name}")
"""


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paths")
    conn = private_host.connect()

    def run(body: str, name: str = "paths", destroy: bool = False, allow: set[Action] | None = None):
        path = tmp / f"{name}.py"
        path.write_text(header(name) + body)
        stack = load_stack(path, {"h": private_host.uri})
        with Engine(stack) as engine:
            plan, obs = engine.plan(destroy=destroy)
            if allow is not None:
                assert {c.action for c in plan.changes} <= allow, [(c.address, c.action) for c in plan.changes]
            engine.apply(plan, obs)
            return plan

    def replan(body: str, name: str = "paths"):
        path = tmp / f"{name}.py"
        path.write_text(header(name) + body)
        stack = load_stack(path, {"h": private_host.uri})
        with Engine(stack) as engine:
            return engine.plan()[0]

    yield run, replan, conn, private_host, tmp
    conn.close()


VM_ONE = """
root = Volume("one.qcow2", pool=pool, size="64MiB")
VM("one", memory="64MiB", max_memory="128MiB", disks=[root], nics=[NIC(net, ip="10.61.0.10")], shutdown_timeout=0)
"""


HOTPLUGGED = VM_ONE.replace(
    'disks=[root], nics=[NIC(net, ip="10.61.0.10")]',
    'disks=[root, Volume("one-extra.qcow2", pool=pool, size="32MiB")], nics=[NIC(net, ip="10.61.0.10"), NIC(net)]',
)


def test_hotplug_disk_and_nic_into_running_vm(env):
    run, replan, conn, _, _ = env
    run(VM_ONE)
    dom = conn.lookupByName("one")
    domid = dom.ID()
    body = HOTPLUGGED
    plan = run(body, allow={Action.CREATE, Action.UPDATE})
    vm_change = next(c for c in plan.changes if c.address == "h/vm/one")
    assert {fc.field: fc.policy for fc in vm_change.changes} == {"disks": "live", "nics": "live"}
    dom = conn.lookupByName("one")
    live = dom.XMLDesc(0)
    assert dom.ID() == domid, "hot-plug must not restart the guest"
    assert "one-extra.qcow2" in live and live.count("<interface type='network'>") == 2
    assert replan(body).empty


def test_fixed_ip_change_updates_the_running_network_in_place(env):
    run, replan, conn, _, _ = env
    net_before = conn.networkLookupByName("paths-net")
    plan = run(HOTPLUGGED.replace("10.61.0.10", "10.61.0.20"), allow={Action.UPDATE})
    assert [c.address for c in plan.changes] == ["h/network/paths-net"]
    assert plan.changes[0].changes[0].field == "reservations"
    net = conn.networkLookupByName("paths-net")
    assert net.isActive() and net.UUIDString() == net_before.UUIDString()
    for xml in (net.XMLDesc(0), net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)):  # live and persistent
        assert "ip='10.61.0.20'" in xml and "10.61.0.10" not in xml
    assert replan(HOTPLUGGED.replace("10.61.0.10", "10.61.0.20")).empty


def test_volume_grows_while_attached_to_running_vm_and_while_detached(env):
    run, replan, conn, _, _ = env
    body = HOTPLUGGED.replace("10.61.0.10", "10.61.0.20").replace('size="64MiB"', 'size="96MiB"')
    body += 'Volume("loose.raw", pool=pool, size="1MiB", format="raw")\n'
    plan = run(body, allow={Action.CREATE, Action.UPDATE})
    assert {c.address: c.action for c in plan.changes} == {
        "h/volume/paths-pool/one.qcow2": Action.UPDATE,
        "h/volume/paths-pool/loose.raw": Action.CREATE,
    }
    body = body.replace('size="1MiB"', 'size="3MiB"')
    plan = run(body, allow={Action.UPDATE})
    assert {c.address for c in plan.changes} == {"h/volume/paths-pool/loose.raw"}
    assert conn.storagePoolLookupByName("paths-pool").storageVolLookupByName("loose.raw").info()[1] == 3 * 1024**2
    dom = conn.lookupByName("one")
    assert dom.blockInfo("vda")[0] == 96 * 1024**2  # grown through the running guest's block device
    assert replan(body).empty


def test_uefi_vm_with_vnc_starts_and_its_password_stays_secret(env):
    run, replan, conn, _, tmp = env
    body = 'VM("uefi", memory="128MiB", firmware="uefi", machine="q35", graphics=Graphics("vnc", password="s3cr3tvn"), shutdown_timeout=0)\n'
    plan = run(body, name="uefi")
    assert "s3cr3tvn" not in repr(plan.to_dict())
    dom = conn.lookupByName("uefi")
    assert dom.isActive()
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)
    assert "passwd='s3cr3tvn'" in xml and "<loader" in xml and "listen='127.0.0.1'" in xml
    assert replan(body, name="uefi").empty
    assert "s3cr3tvn" not in "".join(p.read_text() for p in tmp.glob("*.json"))
    changed = replan(body.replace("s3cr3tvn", "n3wpass"), name="uefi")
    assert [fc.field for fc in changed.changes[0].changes] == ["graphics"]
    assert "n3wpass" not in repr(changed.to_dict()) and "s3cr3tvn" not in repr(changed.to_dict())
    run(body, name="uefi", destroy=True)


def test_pool_directory_removed_only_if_virtplan_made_it_and_it_is_empty(env):
    run, _, _, host, _ = env
    root = Path(f"/proc/{host.pid}/root")
    existing = root / "var/lib/libvirt/images/premade"
    existing.mkdir(parents=True)
    body = (
        'Pool("made", path="/var/lib/libvirt/images/made-by-virtplan")\n'
        'Pool("premade", path="/var/lib/libvirt/images/premade")\n'
    )
    run(body, name="pools")
    assert (root / "var/lib/libvirt/images/made-by-virtplan").is_dir()
    run(body, name="pools", destroy=True)
    assert not (root / "var/lib/libvirt/images/made-by-virtplan").exists()
    assert existing.is_dir(), "a directory virtplan did not create is never removed"


def test_failure_stops_with_a_report_and_rerun_converges(env):
    run, replan, conn, _, _ = env
    # QEMU refuses to start "bad": a VM this stack does not manage holds its disk's write lock
    disk = 'disk = Volume("bad.qcow2", pool=pool, size="16MiB")\n'
    run(disk, name="fail")
    path = conn.storagePoolLookupByName("fail-pool").storageVolLookupByName("bad.qcow2").path()
    holder = conn.defineXML(
        "<domain type='qemu'><name>lock-holder</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64' machine='pc'>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<driver name='qemu' type='qcow2'/><source file='{path}'/><target dev='vda' bus='virtio'/></disk>"
        "</devices></domain>"
    )
    holder.create()
    body = (
        disk
        + 'VM("bad", memory="64MiB", disks=[disk], shutdown_timeout=0)\nVM("good", memory="64MiB", shutdown_timeout=0)\n'
    )
    with pytest.raises(ApplyError) as info:
        run(body, name="fail")
    report = info.value.report
    assert [o.address for o in report.by_status("failed")] == ["h/vm/bad"]
    # libvirt's reason: QEMU's "Failed to get 'write' lock", or, when libvirt read QEMU's log
    # before QEMU wrote it (seen under load), only that QEMU quit while starting: "qemu
    # unexpectedly closed the monitor", or, if QEMU was gone before libvirt connected to it,
    # "failed to connect to monitor socket"
    assert "error in h/vm/bad: " in str(info.value)
    quit_while_starting = ("write", "qemu unexpectedly closed the monitor", "failed to connect to monitor socket")
    assert any(reason in str(info.value) for reason in quit_while_starting), str(info.value)
    holder.destroy()
    holder.undefine()
    run(body, name="fail")
    assert replan(body, name="fail").empty
    assert sorted(d.name() for d in conn.listAllDomains() if d.name() in ("bad", "good")) == ["bad", "good"]
    run(body, name="fail", destroy=True)


def test_killed_apply_converges_without_duplicates(env, private_host):
    _, _, conn, _, tmp = env
    body = "".join(
        f'VM("crash{i}", memory="64MiB", disks=[Volume("crash{i}.qcow2", pool=pool, size="16MiB")], shutdown_timeout=0)\n'
        for i in range(8)
    )
    path = tmp / "crash.py"
    path.write_text(header("crash") + body)
    envvars = {**os.environ, "VIRTPLAN_STATE_DIR": str(tmp / "crash-state"), "VIRTPLAN_URI": private_host.uri}
    cmd = [sys.executable, "-m", "virtplan.cli", "apply", str(path), "--yes"]
    proc = subprocess.Popen(cmd, env=envvars, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once some but not all volumes exist
        try:
            if conn.storagePoolLookupByName("crash-pool").listAllVolumes():
                break
        except libvirt.libvirtError:
            pass  # the pool is not defined or not started yet
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=envvars, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "already exists" not in done.stdout + done.stderr
    plan = subprocess.run(
        [*cmd[:3], "plan", str(path), "--detailed-exitcode"], env=envvars, capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    crash_domains = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith("crash"))
    assert crash_domains == [f"crash{i}" for i in range(8)]
    vols = sorted(v.name() for v in conn.storagePoolLookupByName("crash-pool").listAllVolumes())
    assert vols == [f"crash{i}.qcow2" for i in range(8)]


def test_reservation_added_to_the_stored_config_only_is_removed_cleanly(env):
    run, replan, conn, _, _ = env
    body = HOTPLUGGED.replace("10.61.0.10", "10.61.0.20").replace('size="64MiB"', 'size="96MiB"')
    body += 'Volume("loose.raw", pool=pool, size="3MiB", format="raw")\n'
    net = conn.networkLookupByName("paths-net")
    net.update(  # by hand, in the persistent config only: the running network never had it
        libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
        libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        "<host mac='52:54:00:de:ad:01' ip='10.61.0.99'/>",
        libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG,
    )
    plan = run(body, allow={Action.UPDATE})
    assert [c.address for c in plan.changes] == ["h/network/paths-net"]
    for xml in (net.XMLDesc(0), net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)):
        assert "10.61.0.99" not in xml and "ip='10.61.0.20'" in xml
    assert replan(body).empty


def test_stopped_network_redefined_with_a_new_reservation_converges(env):
    """A stopped network whose definition changes is redefined (the new definition carries
    the new reservation: adding it again would clash), then started."""
    run, replan, conn, _, _ = env
    body = (
        'dns = Network("stopped-dns", cidr="10.70.0.0/24", domain="a.test")\n'
        'VM("st", memory="64MiB", nics=[NIC(dns, ip="10.70.0.10")], state="stopped", shutdown_timeout=0)\n'
    )
    run(body, name="stopped")
    conn.networkLookupByName("stopped-dns").destroy()  # stopped outside virtplan
    edited = body.replace("a.test", "b.test").replace("10.70.0.10", "10.70.0.11")
    plan = run(edited, name="stopped", allow={Action.UPDATE})
    [change] = plan.changes
    assert (change.address, change.reason_fields) == ("h/network/stopped-dns", ["domain", "reservations", "active"])
    net = conn.networkLookupByName("stopped-dns")
    assert net.isActive()
    for xml in (net.XMLDesc(0), net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)):
        assert "name='b.test'" in xml and "ip='10.70.0.11'" in xml and "10.70.0.10" not in xml
    assert replan(edited, name="stopped").empty
    run(edited, name="stopped", destroy=True)


def test_spice_console_vm_starts_listening_on_localhost(env):
    run, replan, conn, _, _ = env
    body = 'VM("spicy", memory="64MiB", graphics="spice", shutdown_timeout=0)\n'
    run(body, name="uefi")
    dom = conn.lookupByName("spicy")
    assert dom.isActive()
    live = dom.XMLDesc(0)
    assert "<graphics type='spice'" in live and "listen='127.0.0.1'" in live and "<model type='qxl'" in live
    assert replan(body, name="uefi").empty
    run(body, name="uefi", destroy=True)


def test_routed_and_host_bridge_networks_carry_running_guests(env):
    run, replan, conn, host, _ = env
    # An existing host bridge, as an operator would have made it (inside the private host).
    for cmd in (["ip", "link", "add", "br-ext", "type", "bridge"], ["ip", "link", "set", "br-ext", "up"]):
        subprocess.run(["nsenter", "-t", str(host.pid), "-n", *cmd], check=True)
    body = (
        'routed = Network("routed", mode="route", cidr="10.67.0.0/24")\n'
        'uplink = Network("uplink", mode="bridge", bridge="br-ext")\n'
        'VM("multi", memory="64MiB", nics=[routed, uplink, NIC(bridge="br-ext")], shutdown_timeout=0)\n'
    )
    run(body, name="modes")
    assert "<forward mode='route'/>" in conn.networkLookupByName("routed").XMLDesc()
    assert conn.networkLookupByName("uplink").isActive()
    dom = conn.lookupByName("multi")
    live = dom.XMLDesc(0)
    assert dom.isActive() and live.count("<interface") == 3 and "bridge='br-ext'" in live
    assert replan(body, name="modes").empty
    run(body, name="modes", destroy=True)
