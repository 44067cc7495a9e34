"""Importing hand-made objects (made with `virsh` here) round-trips to a no-op plan; `adopt`
then takes ownership, and the plan stays a no-op."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest
from clone_support import Cli

from virtplan.hosts.ledger import HostLedger, store_for

NETWORK = """<network><name>hand-net</name><forward mode='nat'/><bridge name='handbr0'/>
<ip address='10.74.0.1' prefix='24'><dhcp><range start='10.74.0.100' end='10.74.0.200'/>
<host mac='52:54:00:aa:bb:01' name='hand-web' ip='10.74.0.20'/></dhcp></ip></network>"""
WEB = """<domain type='qemu'><name>hand-web</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<description>made by hand</description><os><type arch='x86_64'>hvm</type></os>
<devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
  <source file='/var/lib/libvirt/images/hand/hand-web.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='volume' device='disk'><driver name='qemu' type='raw'/>
  <source pool='hand-pool' volume='hand-data.raw'/><target dev='vdb' bus='virtio'/></disk>
<interface type='network'><mac address='52:54:00:aa:bb:01'/><source network='hand-net'/><model type='virtio'/></interface>
<serial type='pty'/><console type='pty'/>
</devices></domain>"""
CDROM = """<domain type='qemu'><name>hand-cd</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os><devices>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='hdc' bus='ide'/><readonly/></disk>
</devices></domain>"""


def virsh(uri: str, *args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["virsh", "-q", "-c", uri, *args], input=stdin, capture_output=True, text=True)
    assert proc.returncode == 0, f"virsh {' '.join(args)}: {proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import")
    uri = private_host.uri
    for name, xml in (("net.xml", NETWORK), ("web.xml", WEB), ("cd.xml", CDROM)):
        (tmp / name).write_text(xml)
    virsh(uri, "net-define", str(tmp / "net.xml"))
    virsh(uri, "net-start", "hand-net")
    virsh(uri, "net-autostart", "hand-net")
    virsh(uri, "pool-define-as", "hand-pool", "dir", "--target", "/var/lib/libvirt/images/hand")
    virsh(uri, "pool-build", "hand-pool")
    virsh(uri, "pool-start", "hand-pool")
    virsh(uri, "vol-create-as", "hand-pool", "hand-base.qcow2", "32M", "--format", "qcow2")
    virsh(uri, "vol-create-as", "hand-pool", "hand-web.qcow2", "32M", "--format", "qcow2",
          "--backing-vol", "hand-base.qcow2", "--backing-vol-format", "qcow2")  # fmt: skip
    virsh(uri, "vol-create-as", "hand-pool", "hand-data.raw", "8M", "--format", "raw")
    virsh(uri, "define", str(tmp / "web.xml"))
    virsh(uri, "start", "hand-web")
    virsh(uri, "define", str(tmp / "cd.xml"))
    conn = private_host.connect()
    yield SimpleNamespace(uri=uri, tmp=tmp, cli=Cli(), conn=conn)
    conn.close()


def test_import_of_matching_objects_round_trips(env):
    out = env.tmp / "web.py"
    env.cli("import", "--host", f"imported={env.uri}", "--name-pattern", "hand-web*", "--out", str(out))
    text = out.read_text()
    assert 'VM(\n    "hand-web"' in text and "hand-cd" not in text
    assert 'mac="52:54:00:aa:bb:01", ip="10.74.0.20"' in text, "the reservation is the NIC's fixed IP"
    assert "backing=hand_base_qcow2" in text
    env.cli("plan", str(out), "--detailed-exitcode")  # exit 0: no changes
    env.cli("import", "--host", f"imported={env.uri}", "--out", str(out), rc=1)  # never overwrites


def test_import_everything_then_adopt(env):
    out = env.tmp / "imported.py"
    said = env.cli("import", "--host", f"imported={env.uri}", "--out", str(out))
    assert "left out vm hand-cd: disks[0] is a cdrom" in said
    text = out.read_text()
    assert "- vm hand-cd: disks[0] is a cdrom" in text, "what is left out is named in the program"
    compile(text, str(out), "exec")
    env.cli("plan", str(out), "--detailed-exitcode")
    refused = env.cli("destroy", str(out), "--yes", "--allow-destroy", rc=1)  # owns nothing yet: deletes nothing
    assert "this stack owns none of its 6 objects on its hosts" in refused and "virtplan adopt" in refused, refused
    assert env.conn.lookupByName("hand-web").isActive()
    out_adopt = env.cli("adopt", str(out))
    assert "Adopted 6 object(s)" in out_adopt, out_adopt
    env.cli("plan", str(out), "--detailed-exitcode")
    dom = ET.fromstring(env.conn.lookupByName("hand-web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    owner = dom.find("metadata/{https://virtplan.dev/xmlns/owner/1}owner")
    assert owner is not None and owner.get("stack") == "imported" and owner.get("address") == "imported/vm/hand-web"
    net = ET.fromstring(env.conn.networkLookupByName("hand-net").XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
    assert net.find("metadata/{https://virtplan.dev/xmlns/owner/1}owner").get("stack") == "imported"
    records = HostLedger(store_for(env.conn), "imported").records()  # kept on the host itself
    assert records["imported/volume/hand-pool/hand-data.raw"]["id"] == "/var/lib/libvirt/images/hand/hand-data.raw"
    # owned now: a change is applied like on any stack
    out.write_text(text.replace('description="made by hand"', 'description="now managed"'))
    assert "description" in env.cli("plan", str(out))
    env.cli("apply", str(out), "--yes")
    dom = env.conn.lookupByName("hand-web")
    assert dom.isActive() and ET.fromstring(dom.XMLDesc(0)).findtext("description") == "now managed"
    env.cli("plan", str(out), "--detailed-exitcode")
    assert "already managed by virtplan stack 'imported'" in env.cli(
        "import", "--host", f"imported={env.uri}", "--name-pattern", "hand-web", "--out", str(env.tmp / "again.py")
    )


VI_NET = """<network><name>vi-net</name><forward mode='nat'/><bridge name='vibr0'/>
<ip address='10.73.0.1' prefix='24'><dhcp><range start='10.73.0.100' end='10.73.0.200'/></dhcp></ip></network>"""


def test_a_virt_install_vm_imports_and_keeps_what_virtplan_does_not_model(env):
    """A VM as plain `virt-install --import` makes it (its defaults: a SPICE console without a
    listen address, host-passthrough CPU, clock timers, power management, boot device, USB
    controllers, a tablet, sound, USB redirection) is imported, adopted and changed; the
    change re-renders the domain and keeps all of that."""
    uri = env.uri
    (env.tmp / "vi-net.xml").write_text(VI_NET)
    virsh(uri, "net-define", str(env.tmp / "vi-net.xml"))
    virsh(uri, "net-start", "vi-net")
    virsh(uri, "pool-define-as", "vi-pool", "dir", "--target", "/var/lib/libvirt/images/vi")
    virsh(uri, "pool-build", "vi-pool")
    virsh(uri, "pool-start", "vi-pool")
    virsh(uri, "vol-create-as", "vi-pool", "vi-web.qcow2", "64M", "--format", "qcow2")
    made = subprocess.run(
        ["virt-install", "--connect", uri, "--import", "--name", "vi-web", "--memory", "128", "--vcpus", "1",
         "--disk", "/var/lib/libvirt/images/vi/vi-web.qcow2", "--network", "network=vi-net",
         "--osinfo", "detect=on,require=off", "--noautoconsole", "--print-xml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "<listen" not in made and 'mode="host-passthrough"' in made, "virt-install's defaults changed"
    (env.tmp / "vi-web.xml").write_text(made)
    virsh(uri, "define", str(env.tmp / "vi-web.xml"))

    out = env.tmp / "vi.py"
    said = env.cli("import", "--host", f"vi={uri}", "--name-pattern", "vi-*", "--out", str(out))
    assert "left out" not in said, said
    text = out.read_text()
    assert 'VM(\n    "vi-web"' in text and 'graphics="spice"' in text  # no listen address: loopback
    comment = " ".join(line[2:] for line in text.splitlines() if line.startswith("# "))
    for kept in ("cpu host-passthrough", "clock utc (timers rtc/pit/hpet)", "pm", "os boot dev=hd",
                 "controller usb ich9-ehci1", "input tablet usb", "redirdev spicevmc x2"):  # fmt: skip
        assert kept in comment, f"{kept!r} not named above the VM:\n{text}"
    env.cli("plan", str(out), "--detailed-exitcode")
    env.cli("adopt", str(out))

    def unmodelled() -> dict[str, object]:
        root = ET.fromstring(env.conn.lookupByName("vi-web").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        return {
            "cpu": root.find("cpu").get("mode"),
            "timers": sorted(t.get("name") for t in root.iterfind("clock/timer")),
            "pm": [ET.tostring(e) for e in root.iterfind("pm/*")],
            "boot": [b.get("dev") for b in root.iterfind("os/boot")],
            "vmport": root.find("features/vmport") is not None,
            "usb": sorted(c.get("model") for c in root.iterfind("devices/controller[@type='usb']")),
            "devices": sorted(d.tag for d in root.find("devices") if d.tag in ("channel", "input", "sound", "redirdev")),
            "addresses": {ET.tostring(d.find("address")) for d in root.find("devices") if d.find("address") is not None},
            "memory": root.findtext("memory"),
        }  # fmt: skip

    before = unmodelled()
    assert before["cpu"] == "host-passthrough" and before["timers"] == ["hpet", "pit", "rtc"] and before["pm"]
    out.write_text(text.replace('memory="128MiB"', 'memory="192MiB"'))
    assert "memory: 128 MiB -> 192 MiB" in env.cli("plan", str(out))
    env.cli("apply", str(out), "--yes")  # the domain is redefined from virtplan's template
    after = unmodelled()
    assert after["memory"] == str(192 * 1024)
    assert {k: v for k, v in after.items() if k != "memory"} == {k: v for k, v in before.items() if k != "memory"}
    env.cli("plan", str(out), "--detailed-exitcode")
    env.cli("destroy", str(out), "--yes", "--allow-destroy")
