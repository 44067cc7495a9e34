"""The pulumi-libvirt backend under the SDK's mocks: what it emits, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource

from virtplan.documents.render import derived_mac
from virtplan.model import load_stack
from virtplan.pulumi.bridged import unsupported

HERE = Path(__file__).resolve().parent
BRIDGEABLE = HERE / "stacks" / "bridgeable.py"
LV = "libvirt:index/"
BACKEND = {"virtplan:backend": "pulumi-libvirt"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


@pulumi.runtime.test
def test_bridgeable_stack_becomes_pulumi_libvirt_resources(program: Any, checks: Any) -> pulumi.Output:
    run = program({**BACKEND, "virtplan:program": str(BRIDGEABLE)}, stack="lab")

    def check() -> None:
        got = sorted((r.type, r.name) for r in run.all())
        assert got == sorted([
            ("pulumi:providers:libvirt", "lab"),
            (LV + "network:Network", "lab/lab-net"),
            (LV + "network:Network", "lab/iso-net"),
            (LV + "pool:Pool", "lab/lab-pool"),
            (LV + "volume:Volume", "lab/lab-pool/base.qcow2"),
            (LV + "volume:Volume", "lab/lab-pool/app-root.qcow2"),
            (LV + "volume:Volume", "lab/lab-pool/app-data.qcow2"),
            (LV + "cloudInitDisk:CloudInitDisk", "lab/lab-pool/app-cidata.iso"),
            (LV + "domain:Domain", "lab/app"),
        ])  # fmt: skip
        provider = run.one("pulumi:providers:libvirt", "lab")
        assert provider.plain["uri"] == "qemu+ssh://root@lab.example/system"
        provider_ref = f"{provider.urn}::provider-lab"
        for r in run.all(LV):
            assert r.provider == provider_ref, r.name
            assert r.delete_before_replace, r.name
        assert run.one(LV + "network:Network", "lab/lab-net").plain == {
            "name": "lab-net", "mode": "nat", "bridge": "vp-lab-net", "autostart": True,
            "addresses": ["10.30.0.0/24"], "dhcp": {"enabled": True}, "domain": "lab.test",
        }  # fmt: skip
        iso = run.one(LV + "network:Network", "lab/iso-net").plain
        assert iso["mode"] == "none" and iso["dhcp"] == {"enabled": False}
        assert run.one(LV + "pool:Pool", "lab/lab-pool").plain == {
            "name": "lab-pool", "type": "dir", "target": {"path": "/srv/lab-pool"}
        }  # fmt: skip
        root = run.one(LV + "volume:Volume", "lab/lab-pool/app-root.qcow2")
        assert root.plain == {
            "name": "app-root.qcow2", "pool": "lab-pool", "format": "qcow2", "size": 2.0 * 1024**3,
            "baseVolumeId": "id-lab/lab-pool/base.qcow2",
        }  # fmt: skip
        assert run.urn(LV + "volume:Volume", "lab/lab-pool/base.qcow2") in root.dependencies
        assert run.urn(LV + "pool:Pool", "lab/lab-pool") in root.dependencies

    return checks.on(run.settled(check), lambda _: None, "resources")


@pulumi.runtime.test
def test_bridged_domain_arguments(program: Any, checks: Any) -> pulumi.Output:
    run = program({**BACKEND, "virtplan:program": str(BRIDGEABLE)}, stack="lab")
    stack = load_stack(BRIDGEABLE)

    def check() -> None:
        app = run.one(LV + "domain:Domain", "lab/app")
        mac0, mac1, mac2 = (derived_mac("bridgeable", "lab/vm/app", i) for i in range(3))
        assert app.plain == {
            "name": "app", "type": "qemu", "vcpu": 2.0, "memory": 256.0, "description": "bridged app",
            "autostart": True, "running": False,
            "disks": [{"volumeId": "id-lab/lab-pool/app-root.qcow2"},
                      {"volumeId": "id-lab/lab-pool/app-data.qcow2", "scsi": True}],
            "networkInterfaces": [
                {"networkId": "id-lab/lab-net", "mac": mac0, "addresses": ["10.30.0.20"], "hostname": "app"},
                {"networkId": "id-lab/iso-net", "mac": mac1},
                {"bridge": "br0", "mac": mac2},
            ],
            "consoles": [{"type": "pty", "targetPort": "0", "targetType": "serial"}],
            "graphics": {"type": "vnc", "listenType": "address", "listenAddress": "127.0.0.1", "autoport": True},
            "cloudinit": "id-lab/lab-pool/app-cidata.iso",
        }  # fmt: skip
        seed = run.one(LV + "cloudInitDisk:CloudInitDisk", "lab/lab-pool/app-cidata.iso")
        assert is_secret(seed.inputs["userData"]) and not is_secret(seed.inputs["metaData"])
        assert "s3cret-pw" in seed.plain["userData"] and '- "curl"' in seed.plain["userData"]
        assert seed.plain["pool"] == "lab-pool" and seed.plain["name"] == "app-cidata.iso"
        for other in run.all():
            if other is not seed:
                assert "s3cret-pw" not in repr(other.inputs), other.name
        assert stack.vms[0].name == "app"

    outputs = get_root_resource().outputs["vms"]  # type: ignore[union-attr]
    assert set(outputs) == {"lab/app"}
    vm = outputs["lab/app"]

    def check_outputs(values: list[Any]) -> None:
        assert values == [
            "id-lab/app",
            [derived_mac("bridgeable", "lab/vm/app", i) for i in range(3)],
            ["10.30.0.20", None, None],
        ]

    return checks.all(
        checks.on(run.settled(check), lambda _: None, "domain"),
        checks.on(pulumi.Output.all(vm["uuid"], vm["macAddresses"], vm["ipAddresses"]), check_outputs, "outputs"),
    )


@pulumi.runtime.test
def test_demo_is_refused_with_every_reason(program: Any) -> None:
    with pytest.raises(pulumi.RunError) as info:
        program(BACKEND, stack="demo")
    message = str(info.value)
    assert "pulumi-libvirt backend cannot express 4 declared feature(s)" in message
    assert "local/vm/demo-1: console_log (no serial log file; set console_log=False for this backend)" in message
    assert "local/vm/demo-1: max_memory" in message and "local/vm/demo-2: max_memory" in message
    assert "nothing was registered" in message


def test_every_inexpressible_feature_is_named(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "domain.xml.j2").write_text("<domain/>")
    (templates / "cloud-init").mkdir()
    image = tmp_path / "image.raw"
    image.write_bytes(b"\0" * 4096)
    program = tmp_path / "everything.py"
    program.write_text(f"""
from virtplan import NIC, VM, Disk, Graphics, Host, Network, Pool, Volume, use_templates
use_templates({str(templates)!r})
Host("h", uri="test:///default")
net = Network("n", cidr="10.1.0.0/24", gateway="10.1.0.9", dhcp_range=("10.1.0.100", "10.1.0.200"))
pool = Pool("p", path="/srv/p", autostart=False)
img = Volume("img", pool=pool, source={str(image)!r}, size="1MiB", format="raw")
d = Volume("d", pool=pool, size="1GiB")
VM("v", memory="100000KiB", max_memory="1GiB", vcpus=1, max_vcpus=2, firmware="uefi",
   disks=[Disk(img, bus="sata", boot=1, target="sda"), d], nics=[NIC(net, model="e1000")],
   graphics=Graphics(password="pw"))
""")
    problems = unsupported(load_stack(program))
    expected = [
        "stack: template overrides for domain.xml.j2",
        "h/network/n: gateway 10.1.0.9",
        "h/network/n: dhcp_range",
        "h/pool/p: autostart=False",
        "h/volume/p/img: size together with source",
        "h/vm/v: max_memory",
        "h/vm/v: max_vcpus",
        "h/vm/v: memory 100000KiB",
        "h/vm/v: firmware='uefi'",
        "h/vm/v: disks[0].bus='sata'",
        "h/vm/v: disks[0].boot",
        "h/vm/v: disks[0].target",
        "h/vm/v: nics[0].model='e1000'",
        "h/vm/v: graphics.password",
        "h/vm/v: console_log",
    ]
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert problem.startswith(start), (problem, start)
    assert unsupported(load_stack(BRIDGEABLE)) == []


@pulumi.runtime.test
def test_direct_kernel_boot_maps_to_kernel_and_cmdlines(program: Any, checks: Any, tmp_path: Path) -> pulumi.Output:
    stack = tmp_path / "direct.py"
    stack.write_text(
        "from virtplan import VM, Host, Pool, Volume\n"
        "Host('lab', uri='qemu+ssh://root@lab.example/system', domain_type='qemu')\n"
        "pool = Pool('p', path='/srv/p')\n"
        "kernel = Volume('vmlinuz', pool=pool, size='16MiB', format='raw')\n"
        "initrd = Volume('initrd.img', pool=pool, size='4MiB', format='raw')\n"
        "VM('direct', memory='128MiB', disks=[Volume('d.qcow2', pool=pool, size='64MiB')], kernel=kernel,\n"
        "   initrd=initrd, cmdline='console=ttyS0 quiet', console_log=False)\n"
    )
    run = program({**BACKEND, "virtplan:program": str(stack)}, stack="direct")

    def check() -> None:
        direct = run.one(LV + "domain:Domain", "lab/direct").plain
        assert direct["kernel"] == "id-lab/p/vmlinuz" and direct["initrd"] == "id-lab/p/initrd.img"
        assert direct["cmdlines"] == [{"console": "ttyS0"}, {"_": "quiet"}]

    return checks.on(run.settled(check), lambda _: None, "direct boot")
