"""Redefinitions keep what the stack does not model (virtplan.documents.merge), and say what
they cannot keep."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from virtplan.documents.merge import Kept, redefinition

NEW = """<domain type="{type}"><name>v</name>
<metadata><virtplan:owner xmlns:virtplan="https://virtplan.dev/xmlns/owner/1" stack="s"/></metadata>
<memory unit="KiB">262144</memory><os><type arch="x86_64" machine="{machine}">hvm</type></os>
<features><acpi/></features><clock offset="utc"/><on_reboot>restart</on_reboot>
<devices>
<disk type="volume" device="disk"><source pool="p" volume="v.qcow2"/><target dev="vda" bus="virtio"/>{boot}</disk>
<interface type="network"><mac address="52:54:00:00:00:01"/><source network="n"/><model type="virtio"/></interface>
</devices></domain>"""
OLD = """<domain type="kvm"><name>v</name>
<metadata><other:tag xmlns:other="https://example.org/other">kept</other:tag></metadata>
<memory unit="KiB">131072</memory><os><type arch="x86_64" machine="pc-i440fx-7.2">hvm</type><boot dev="hd"/>
<boot dev="cdrom"/><bootmenu enable="yes"/></os>
<features><acpi/><vmport state="off"/></features><cpu mode="host-passthrough"/>
<clock offset="utc"><timer name="rtc" tickpolicy="catchup"/></clock><on_reboot>restart</on_reboot>
<pm><suspend-to-mem enabled="no"/></pm>
<devices>
<disk type="file" device="disk"><source file="/x/v.qcow2"/><target dev="vda" bus="virtio"/>
  <address type="pci" domain="0x0000" bus="0x00" slot="0x04" function="0x0"/></disk>
<interface type="network"><mac address="52:54:00:00:00:01"/><source network="n"/><model type="e1000"/>
  <address type="pci" domain="0x0000" bus="0x00" slot="0x03" function="0x0"/></interface>
<controller type="usb" index="0" model="ich9-ehci1"/><input type="tablet" bus="usb"/>
<graphics type="vnc"/><rng model="virtio"><backend model="random">/dev/urandom</backend></rng>
</devices></domain>"""


def render(type_: str = "kvm", machine: str = "pc-i440fx-7.2", boot: str = "") -> str:
    return NEW.format(type=type_, machine=machine, boot=boot)


def test_unmodelled_settings_and_devices_are_kept_and_modelled_ones_are_the_stacks():
    report = Kept()
    root = ET.fromstring(redefinition(render(), OLD, report))
    assert root.findtext("memory") == "262144", "the stack's memory"
    assert [b.get("dev") for b in root.iterfind("os/boot")] == ["hd", "cdrom"]
    assert root.find("os/bootmenu") is not None and root.find("features/vmport") is not None
    assert root.find("features/acpi") is not None and root.find("cpu").get("mode") == "host-passthrough"
    assert root.find("clock/timer").get("name") == "rtc" and root.find("pm") is not None
    assert root.find("devices/controller[@type='usb']") is not None and root.find("devices/rng") is not None
    assert root.find("devices/input[@type='tablet']") is not None
    assert root.find("devices/graphics") is None, "graphics are the stack's: it declares none"
    assert root.find("devices/interface/model").get("type") == "virtio", "NICs are the stack's"
    assert root.find("devices/disk/address").get("slot") == "0x04", "device addresses are kept"
    assert root.find("metadata/{https://example.org/other}tag").text == "kept", "other tools' metadata stays"
    assert root.find("metadata/{https://virtplan.dev/xmlns/owner/1}owner") is not None
    assert "cpu host-passthrough" in report.kept and "controller usb ich9-ehci1" in report.kept
    assert "clock utc (timers rtc)" in report.kept and not report.dropped


def test_what_cannot_be_kept_is_dropped_and_said():
    report = Kept()
    root = ET.fromstring(redefinition(render(boot='<boot order="1"/>'), OLD, report))
    assert root.find("os/boot") is None, "libvirt refuses <os><boot> beside per-device boot orders"
    assert any(d.startswith("os boot dev=hd (the stack gives disks a boot order)") for d in report.dropped)
    report = Kept()
    root = ET.fromstring(redefinition(render(type_="qemu"), OLD, report))
    assert root.find("cpu") is None, "host-passthrough needs kvm"
    assert "cpu host-passthrough (the domain type changes to qemu)" in report.dropped
    report = Kept()
    root = ET.fromstring(redefinition(render(machine="pc-q35-7.2"), OLD, report))
    assert root.find("devices/controller") is None and root.find("devices/disk/address") is None
    assert "devices virtplan does not model (the machine type changes)" in report.dropped
