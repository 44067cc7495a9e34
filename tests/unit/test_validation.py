"""Whole-stack validation: every error names the resource and the field, and all are reported."""

from __future__ import annotations

import pytest
from builders import declare

from virtplan.errors import ValidationError
from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Volume, validate


def errors_of(program) -> list[str]:
    with declare() as stack:
        program()
    with pytest.raises(ValidationError) as info:
        validate(stack)
    return [str(e) for e in info.value.errors]


def base(**vm_kwargs):
    Host("h", "test:///default")
    net = Network("net", cidr="10.1.0.0/24")
    pool = Pool("pool", path="/var/lib/p")
    disk = Volume("disk", pool=pool, size="1GiB")
    kwargs = {"memory": "128MiB", "disks": [disk], "nics": [net]}
    kwargs.update(vm_kwargs)
    return VM("vm", **kwargs), net, pool, disk


CASES = {
    "slash in name": (
        lambda: (Host("h", "test:///default"), Network("a/b", cidr="10.0.0.0/24")),
        "h/network/a/b: name: 'a/b' contains '/'",
    ),
    "empty name": (lambda: (Host("h", "test:///default"), Pool("", path="/x")), "name: must be a non-empty string"),
    "long name": (
        lambda: (Host("h", "test:///default"), Pool("p" * 65, path="/x")),
        "is 65 characters long; use at most 64",
    ),
    "unit typo": (lambda: base(memory="2 potatoes"), "h/vm/vm: memory: unknown unit 'potatoes'"),
    "zero memory": (lambda: base(memory=0), "h/vm/vm: memory: 0 is too small"),
    "zero vcpus": (lambda: base(vcpus=0), "h/vm/vm: vcpus: must be a whole number of at least 1"),
    "max below current": (
        lambda: base(memory="1GiB", max_memory="512MiB"),
        "max_memory: 512MiB is less than memory=1GiB",
    ),
    "bad cidr": (
        lambda: (Host("h", "test:///default"), Network("n", cidr="10.0.0.1/24")),
        "h/network/n: cidr: '10.0.0.1/24' is not an IPv4 subnet",
    ),
    "nat without cidr": (lambda: (Host("h", "test:///default"), Network("n")), "cidr: mode 'nat' needs an IPv4 subnet"),
    "bad mode": (
        lambda: (Host("h", "test:///default"), Network("n", mode="nta", cidr="10.0.0.0/24")),
        "mode: 'nta' is not one of nat, route, isolated, bridge",
    ),
    "bridge mode needs bridge": (
        lambda: (Host("h", "test:///default"), Network("n", mode="bridge")),
        "bridge: mode 'bridge' needs the name of an existing host bridge",
    ),
    "overlap": (
        lambda: (Host("h", "test:///default"), Network("a", cidr="10.0.0.0/16"), Network("b", cidr="10.0.5.0/24")),
        "h/network/b: cidr: 10.0.5.0/24 overlaps 10.0.0.0/16 of h/network/a on the same host",
    ),
    "ip outside": (lambda: _vm_with_nic(ip="10.9.0.5"), "nics[0].ip: 10.9.0.5 is outside h/network/net (10.1.0.0/24)"),
    "ip is gateway": (lambda: _vm_with_nic(ip="10.1.0.1"), "nics[0].ip: 10.1.0.1 is the gateway of h/network/net"),
    "bad mac": (lambda: _vm_with_nic(mac="zz:zz"), "nics[0].mac: 'zz:zz' is not a MAC address"),
    "dhcp range outside": (
        lambda: (Host("h", "test:///default"), Network("n", cidr="10.0.0.0/24", dhcp_range=("10.0.1.2", "10.0.1.9"))),
        "dhcp_range: 10.0.1.2-10.0.1.9 is not inside 10.0.0.0/24",
    ),
    "blank volume without size": (
        lambda: (Host("h", "test:///default"), Volume("v", pool=Pool("p", path="/p"))),
        "h/volume/p/v: size: is required for a blank volume",
    ),
    "bad format": (
        lambda: (Host("h", "test:///default"), Volume("v", pool=Pool("p", path="/p"), size="1G", format="vmdk")),
        "format: 'vmdk' is not one of qcow2, raw",
    ),
    "unsupported pool type": (
        lambda: (Host("h", "test:///default"), Pool("p", path="/p", type="lvm")),
        "type: pool type 'lvm' is not supported yet",
    ),
    "relative pool path": (
        lambda: (Host("h", "test:///default"), Pool("p", path="p")),
        "path: 'p' must be an absolute directory path",
    ),
    "backing bigger than overlay": (
        lambda: _overlay(size="1GiB"),
        "h/volume/p/top: size: 1GiB is smaller than its backing volume h/volume/p/base (10GiB)",
    ),
    "missing image": (
        lambda: (Host("h", "test:///default"), Volume("v", pool=Pool("p", path="/p"), source="/nonexistent.qcow2")),
        "source: image file /nonexistent.qcow2 does not exist",
    ),
    "bad firmware": (lambda: base(firmware="coreboot"), "firmware: 'coreboot' is not one of bios, uefi"),
    "bad state": (lambda: base(state="paused"), "state: 'paused' is not one of running, stopped"),
    "vnc password too long": (
        lambda: base(graphics=Graphics("vnc", password="0123456789")),
        "graphics.password: is 10 characters long; VNC allows at most 8",
    ),
    "bad graphics": (lambda: base(graphics=Graphics("rdp")), "graphics.type: 'rdp' is not one of none, vnc, spice"),
    "bad bus": (
        lambda: _vm_disk(Disk.__new__(Disk), bus="usb"),
        "disks[0].bus: 'usb' is not one of virtio, scsi, sata, ide",
    ),
    "nic with both": (lambda: _vm_with_nic(bridge="br0"), "nics[0]: give exactly one of network="),
    "cloud-init without disk": (
        lambda: base(disks=[], cloud_init=CloudInit(user="ops")),
        "cloud_init: needs at least one disk",
    ),
    "bad uri": (lambda: Host("h", "localhost"), "h: uri: 'localhost' is not a libvirt URI"),
}


def _vm_with_nic(**nic):
    _, net, _, _ = base(nics=[])
    vm = VM("vm2", memory="128MiB", nics=[NIC(network=net, **nic)])
    return vm


def _overlay(size):
    Host("h", "test:///default")
    pool = Pool("p", path="/p")
    base_vol = Volume("base", pool=pool, size="10GiB")
    Volume("top", pool=pool, backing=base_vol, size=size)


def _vm_disk(_unused, bus):
    vm, _, _, disk = base()
    vm.disks = [Disk(disk, bus=bus)]


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid_stack_names_resource_and_field(case):
    program, expected = CASES[case]
    errors = errors_of(program)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_at_once():
    def program():
        Host("h", "test:///default")
        Network("a/b", cidr="300.0.0.0/24")
        Pool("p", path="relative")
        VM("v", memory="lots", vcpus=0)

    errors = errors_of(program)
    assert len(errors) >= 5
    fields = {e.split(": ")[1] for e in errors}
    assert {"name", "cidr", "path", "memory", "vcpus"} <= fields


def test_duplicate_names_on_one_host():
    errors = errors_of(lambda: (Host("h", "test:///default"), Pool("p", path="/a"), Pool("p", path="/b")))
    assert "h/pool/p: name: two pools are named 'p' on one host" in errors


def test_same_name_on_two_hosts_is_fine(build):
    def program():
        a, b = Host("a", "test:///default"), Host("b", "test:///default")
        Network("net", host=a, cidr="10.0.0.0/24")
        Network("net", host=b, cidr="10.0.0.0/24")  # same subnet on another host: no overlap

    stack = build(program)
    assert [n.address for n in stack.networks] == ["a/network/net", "b/network/net"]


def test_duplicate_mac_and_ip():
    def program():
        _, net, _, _ = base(nics=[])
        VM("x", memory="64MiB", nics=[NIC(net, mac="52:54:00:00:00:01", ip="10.1.0.5")])
        VM("y", memory="64MiB", nics=[NIC(net, mac="52:54:00:00:00:01", ip="10.1.0.5")])

    errors = errors_of(program)
    assert any("h/vm/y: nics[0].mac: 52:54:00:00:00:01 is also used by h/vm/x nics[0]" in e for e in errors)
    assert any("h/vm/y: nics[0].ip: 10.1.0.5 is also given to h/vm/x nics[0]" in e for e in errors)


def test_reference_to_another_hosts_resource():
    def program():
        a, b = Host("a", "test:///default"), Host("b", "test:///default")
        net = Network("net", host=a, cidr="10.0.0.0/24")
        VM("vm", host=b, memory="64MiB", nics=[net])

    errors = errors_of(program)
    assert any(
        "b/vm/vm: nics[0].network: refers to a/network/net on host 'a', but lives on host 'b'" in e for e in errors
    )


def test_reference_to_undeclared_resource():
    from virtplan.model import Stack

    outside = Stack("other")
    from virtplan.model import collecting

    with collecting(outside):
        Host("h", "test:///default")
        stray = Volume("stray", pool=Pool("p", path="/p"), size="1G")

    def program():
        Host("h", "test:///default")
        VM("vm", memory="64MiB", disks=[stray])

    errors = errors_of(program)
    assert any("h/vm/vm: disks[0]: refers to volume 'p/stray', which this stack does not declare" in e for e in errors)


def test_backing_cycle_is_reported():
    def program():
        Host("h", "test:///default")
        pool = Pool("p", path="/p")
        a = Volume("a", pool=pool, size="1G")
        b = Volume("b", pool=pool, size="1G", backing=a)
        a.backing = b

    errors = errors_of(program)
    assert any("dependency cycle" in e and "h/volume/p/a" in e and "h/volume/p/b" in e for e in errors)


def test_several_hosts_need_explicit_host():
    errors = errors_of(lambda: (Host("a", "test:///default"), Host("b", "test:///default"), Pool("p", path="/p")))
    assert "?/pool/p: host: the stack has several hosts (a, b); say which with host=" in errors


def test_single_host_is_the_default(build):
    stack = build(lambda: (Host("only", "test:///default"), Pool("p", path="/p")))
    assert stack.pools[0].host is stack.hosts[0]
    assert stack.pools[0].address == "only/pool/p"


def test_volume_host_follows_its_pool(build):
    stack = build(lambda: (Host("h", "test:///default"), Volume("v", pool=Pool("p", path="/p"), size="1G")))
    assert stack.volumes[0].address == "h/volume/p/v"
    with pytest.raises(AttributeError):
        stack.volumes[0].host = None


def test_secrets_never_show_in_repr_or_errors():
    ci = CloudInit(user="ops", password="hunter2")
    assert "hunter2" not in repr(ci) and "hunter2" not in str(ci.password)
    errors = errors_of(lambda: base(cloud_init=ci, memory="oops"))
    assert not any("hunter2" in e for e in errors)
