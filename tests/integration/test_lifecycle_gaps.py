"""Lifecycle gaps (issue 11, item 10), against real private hosts through the CLI:

- a data disk removed from a running VM is hot-unplugged (a probe guest lets go of it);
  a blank guest cannot, and apply says why, changing nothing else;
- a NIC on a host bridge that does not exist is refused at plan time, before anything
  is made;
- `destroy` of an imported, not adopted, stack says the stack owns none of its objects;
- a volume or network that a VM this stack does not manage uses is not deleted unless the
  user names it (`--target`), and the plan names that VM.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import libvirt
import pytest
from review_support import Cli

from virtplan_lab.probe import GUEST, ProbeImage, wait_for_event

HEADER = (
    "from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume\n"
    'Host("h", uri="qemu:///system", domain_type="qemu")\n'
)


def live_disks(conn, name: str) -> list[str]:
    xml = conn.lookupByName(name).XMLDesc(0)
    return [line.strip() for line in xml.splitlines() if "<source pool=" in line]


# -- (a) hot-unplug ------------------------------------------------------------------------
def probe_stack(image: ProbeImage, workdir: Path, with_data: bool) -> str:
    data = ', Volume("unplug-data.qcow2", pool=pool, size="16MiB")' if with_data else ""
    return HEADER + (
        f'net = Network("unplug-net", cidr="10.97.0.0/24")\n'
        f'pool = Pool("unplug-pool", path="{workdir}/unplug-pool")\n'
        f'boot = Pool("unplug-boot", path="{workdir}/unplug-boot")\n'
        f'kernel = Volume("vmlinuz", pool=boot, source={str(image.kernel)!r}, format="raw")\n'
        f'initrd = Volume("initrd.img", pool=boot, source={str(image.initrd)!r}, format="raw")\n'
        f'VM("unplug", memory="128MiB", nics=[net], kernel=kernel, initrd=initrd, cmdline={image.cmdline!r},\n'
        f'   disks=[Volume("unplug.qcow2", pool=pool, size="64MiB"){data}],\n'
        '   cloud_init=CloudInit(user_data="#cloud-config\\nprobe_value: x\\n"), shutdown_timeout=30)\n'
    )


def test_a_data_disk_is_hot_unplugged_from_a_running_guest(make_private_host, probe_image, home):
    host = make_private_host("unplug")
    cli = Cli(host.uri, home / "unplug-user", cwd=home)
    stack = home / "unplug.py"
    stack.write_text(probe_stack(probe_image, host.workdir, with_data=True))
    cli("apply", str(stack), "--yes")
    log = Path(f"/proc/{host.pid}/root") / str(host.workdir / "unplug-pool" / "unplug-console.log").lstrip("/")
    wait_for_event(log, [GUEST], 90)  # the guest's OS runs: it can answer a hot-unplug
    conn = host.connect()
    try:
        domid = conn.lookupByName("unplug").ID()
        assert [d for d in live_disks(conn, "unplug") if "unplug-data" in d]
        stack.write_text(probe_stack(probe_image, host.workdir, with_data=False))
        plan = cli("plan", str(stack))
        assert "~ vm unplug  update: disks changed" in plan and "(live)" in plan, plan
        out = cli("apply", str(stack), "--yes", "--allow-destroy")
        assert "waiting up to 20 s for the guest in unplug to release disk unplug-pool/unplug-data.qcow2" in out, out
        assert conn.lookupByName("unplug").ID() == domid, "hot-unplug must not restart the guest"
        assert [d for d in live_disks(conn, "unplug") if "unplug-data" in d] == []
        assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    finally:
        conn.close()


def test_a_blank_guest_cannot_let_go_of_a_disk_and_apply_says_why(cli, conn, home):
    stack = home / "blank-unplug.py"
    pool = 'pool = Pool("bu-pool", path="/var/lib/libvirt/images/bu")\nroot = Volume("bu.qcow2", pool=pool, size="16MiB")\n'
    data = 'data = Volume("bu-data.qcow2", pool=pool, size="16MiB")\n'
    stack.write_text(HEADER + pool + data + 'VM("bu", memory="64MiB", disks=[root, data], shutdown_timeout=0)\n')
    cli("apply", str(stack), "--yes")
    stack.write_text(HEADER + pool + data + 'VM("bu", memory="64MiB", disks=[root], shutdown_timeout=0)\n')
    out = cli("apply", str(stack), "--yes", rc=1)
    assert "did not release disk bu-pool/bu-data.qcow2 within 20 s: hot-unplug needs a running OS" in out, out
    assert "bu-data.qcow2" in conn.lookupByName("bu").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "definition changed"
    cli("destroy", str(stack), "--yes", "--allow-destroy")


# -- (b) host bridges ------------------------------------------------------------------------
def test_a_nic_on_a_host_bridge_that_does_not_exist_is_refused_at_plan_time(cli, conn, home, private_host):
    stack = home / "bridge.py"
    body = (
        'pool = Pool("br-pool", path="/var/lib/libvirt/images/br-gap")\n'
        'VM("br-vm", memory="64MiB", disks=[Volume("br.qcow2", pool=pool, size="16MiB")], '
        'nics=[NIC(bridge="{bridge}")], shutdown_timeout=0)\n'
    )
    stack.write_text(HEADER + body.format(bridge="no-such-br0"))
    out = cli("plan", str(stack), rc=1)
    assert "h/vm/br-vm: nics[0].bridge: host 'h' has no interface 'no-such-br0'" in out, out
    cli("apply", str(stack), "--yes", rc=1)
    assert "br-pool" not in conn.listStoragePools() + conn.listDefinedStoragePools(), "apply made the pool anyway"
    for cmd in (["ip", "link", "add", "br-real", "type", "bridge"], ["ip", "link", "set", "br-real", "up"]):
        subprocess.run(["nsenter", "-t", str(private_host.pid), "-n", *cmd], check=True)
    stack.write_text(HEADER + body.format(bridge="br-real"))
    cli("apply", str(stack), "--yes")
    assert conn.lookupByName("br-vm").isActive()
    cli("destroy", str(stack), "--yes", "--allow-destroy")


# -- (c) destroy of an imported stack ----------------------------------------------------------
IMPORTED_NET = """<network><name>imp-net</name><forward mode='nat'/><bridge name='impbr0'/>
<ip address='10.98.0.1' prefix='24'><dhcp><range start='10.98.0.100' end='10.98.0.200'/></dhcp></ip></network>"""
IMPORTED_VM = """<domain type='qemu'><name>imp-vm</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64'>hvm</type></os><devices>
<interface type='network'><mac address='52:54:00:aa:bc:01'/><source network='imp-net'/><model type='virtio'/></interface>
<serial type='pty'/><console type='pty'/></devices></domain>"""


def test_destroy_of_an_imported_stack_says_it_owns_none_of_its_objects(cli, conn, home):
    net = conn.networkDefineXML(IMPORTED_NET)
    net.create()
    net.setAutostart(1)
    conn.defineXML(IMPORTED_VM)
    stack = home / "imported-gap.py"
    cli("import", "--host", f"h={cli.uri}", "--out", str(stack), "--name-pattern", "imp-*")
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0
    out = cli("destroy", str(stack), "--yes", "--allow-destroy", rc=1)
    assert "this stack owns none of its 2 objects on its hosts" in out and "virtplan adopt" in out, out
    assert conn.lookupByName("imp-vm") and conn.networkLookupByName("imp-net").isActive()
    cli("adopt", str(stack))
    cli("destroy", str(stack), "--yes", "--allow-destroy")
    assert "imp-vm" not in conn.listDefinedDomains()


# -- (d) what unmanaged VMs use -----------------------------------------------------------------
HANDMADE = """<domain type='qemu'><name>handmade</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{path}'/>
<target dev='vda' bus='virtio'/></disk>
<interface type='network'><source network='shared-net'/><model type='virtio'/></interface>
</devices></domain>"""


def test_deleting_what_an_unmanaged_vm_uses_names_that_vm_and_needs_the_object_named(cli, conn, home):
    stack = home / "shared.py"
    base = 'pool = Pool("shared-pool", path="/var/lib/libvirt/images/shared")\n'
    shared = 'Volume("shared.qcow2", pool=pool, size="16MiB")\nNetwork("shared-net", cidr="10.99.0.0/24")\n'
    stack.write_text(HEADER + base + shared)
    cli("apply", str(stack), "--yes")
    path = conn.storagePoolLookupByName("shared-pool").storageVolLookupByName("shared.qcow2").path()
    conn.defineXML(HANDMADE.format(path=path)).create()
    try:
        stack.write_text(HEADER + base)  # both removed from the stack
        out = cli("plan", str(stack), rc=1)
        assert (
            "h/volume/shared-pool/shared.qcow2: used by: VM 'handmade' uses it and this stack does not manage it" in out
        )
        assert "h/network/shared-net: used by: VM 'handmade' uses it" in out and "--target h/network/shared-net" in out
        cli("apply", str(stack), "--yes", "--allow-destroy", rc=1)
        assert conn.storagePoolLookupByName("shared-pool").storageVolLookupByName("shared.qcow2")
        named = ("--target", "h/volume/shared-pool/shared.qcow2")
        plan = cli("plan", str(stack), *named)
        assert "used by VM 'handmade', which this stack does not manage: a disk is pulled from under it" in plan
        assert "shared-net" not in plan.split("Plan:")[0].split("note:")[0]
        cli("apply", str(stack), "--yes", "--allow-destroy", *named)
        with pytest.raises(libvirt.libvirtError):
            conn.storagePoolLookupByName("shared-pool").storageVolLookupByName("shared.qcow2")
        assert conn.networkLookupByName("shared-net").isActive(), "the network was not named: it stays"
    finally:
        dom = conn.lookupByName("handmade")
        dom.destroy()
        dom.undefine()
        time.sleep(0.1)
    cli("apply", str(stack), "--yes", "--allow-destroy")  # now nobody uses the network
    cli("destroy", str(stack), "--yes", "--allow-destroy")
