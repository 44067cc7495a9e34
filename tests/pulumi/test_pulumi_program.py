"""The Pulumi program (`__main__.py`, native backend) under the SDK's mocks.

Every assertion on registrations or outputs runs inside `apply` through the `checks`
fixture, so a check that never runs fails the test instead of passing it.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import dill
import pulumi
import pytest
import yaml
from pulumi.runtime import rpc
from pulumi.runtime.settings import get_root_resource

from virtplan.model import load_stack
from virtplan.pulumi.provider import VirtplanProvider

REPO = Path(__file__).resolve().parents[2]
DYNAMIC = "pulumi-python:dynamic/virtplan:"
TYPES = {"network": "Network", "pool": "Pool", "volume": "Volume", "vm": "VM"}
FEATURES = Path(__file__).parent / "stacks" / "features.py"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    monkeypatch.setenv("VIRTPLAN_STATE_DIR", str(tmp_path / "state"))


def is_secret(value: Any) -> bool:
    """True for a value sent to the engine as a Pulumi secret."""
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


def demo_config() -> dict[str, Any]:
    """The example stack config, as the CLI would read it from stacks/Pulumi.demo.yaml."""
    return yaml.safe_load((REPO / "stacks" / "Pulumi.demo.yaml").read_text())["config"]


def stack_outputs() -> dict[str, Any]:
    return dict(get_root_resource().outputs)  # type: ignore[union-attr]


@pulumi.runtime.test
def test_demo_registers_one_dynamic_resource_per_declared_resource(program: Any, checks: Any) -> pulumi.Output:
    config = demo_config()
    hosts = {"local": "qemu:///system"}  # the stack file's (no override configured)
    expected = load_stack(REPO / "stacks" / "demo.py", hosts)
    run = program(config, stack="demo")

    def check() -> None:
        got = {(r.type, r.name) for r in run.all()}
        want = {(DYNAMIC + TYPES[r.kind], f"{r.host.name}/{r.key}") for r in expected.managed()}  # type: ignore[union-attr]
        assert got == want
        assert len(run.all()) == len(want)
        assert all(r.delete_before_replace for r in run.all())
        for r in expected.managed():
            reg = run.one(DYNAMIC + TYPES[r.kind], f"{r.host.name}/{r.key}")  # type: ignore[union-attr]
            deps = {run.urn(DYNAMIC + TYPES[d.kind], f"{d.host.name}/{d.key}") for d in r.dependencies()}  # type: ignore[union-attr]
            assert set(reg.dependencies) == deps, r.address
            assert (reg.plain["project"], reg.plain["stack"]) == ("virtplan", "demo")
            assert reg.plain["host"] == {"name": "local", "uri": hosts["local"], "domainType": "qemu", "workers": 4.0}

    return checks.on(run.settled(check), lambda _: None, "registrations")


@pulumi.runtime.test
def test_demo_inputs_use_wire_names_and_follow_references(program: Any, checks: Any) -> pulumi.Output:
    run = program(demo_config(), stack="demo")
    stack = load_stack(REPO / "stacks" / "demo.py")
    vm1 = next(v for v in stack.vms if v.name == "demo-1")
    disk = vm1.disks[0].volume
    assert disk.pool is not None

    def check() -> None:
        vm = run.one(DYNAMIC + "VM", "local/demo-1").plain
        assert vm["name"] == "demo-1"
        assert vm["memory"] == vm1.memory and vm["maxMemory"] == vm1.max_memory
        assert vm["vcpus"] == 1.0 and isinstance(vm["vcpus"], float)  # numbers travel as floats
        assert vm["shutdownTimeout"] == vm1.shutdown_timeout
        assert vm["description"] == vm1.description
        assert vm["state"] == "running" and vm["serial"] is True
        assert vm["disks"] == [
            {
                "bus": "virtio",
                "volume": {
                    "name": disk.name, "size": disk.size, "format": "qcow2",
                    "pool": {"name": disk.pool.name, "path": disk.pool.path, "type": "dir", "autostart": True},  # type: ignore[union-attr]
                },
            }
        ]  # fmt: skip
        assert vm["nics"] == [
            {
                "model": "virtio",
                "ip": "10.77.0.10",
                "network": {
                    "name": "demo-net", "mode": "nat", "cidr": "10.77.0.0/24", "domain": "demo.test",
                    "dhcp": True, "autostart": True,
                },
            }
        ]  # fmt: skip
        assert "graphics" not in vm  # None inputs are not sent
        assert (
            vm["cloudInit"]["hostname"] == "demo-1" and "probe_value: hello from demo-1" in vm["cloudInit"]["userData"]
        )
        assert vm["kernel"]["name"] == "probe-vmlinuz" and vm["initrd"]["name"] == "probe-initrd.img"
        assert vm["cmdline"] == "console=ttyS0 quiet"
        net = run.one(DYNAMIC + "Network", "local/demo-net").plain
        assert net["reservations"] == [{"vm": "demo-1", "nic": 0.0, "ip": "10.77.0.10"}]
        assert net["cidr"] == "10.77.0.0/24" and net["mode"] == "nat"
        vol = run.one(DYNAMIC + "Volume", f"local/{disk.key}").plain
        assert vol["pool"]["name"] == disk.pool.name and vol["size"] == disk.size  # type: ignore[union-attr]

    return checks.on(run.settled(check), lambda _: None, "inputs")


@pulumi.runtime.test
def test_provider_is_pickled_with_strings_only(program: Any, checks: Any) -> pulumi.Output:
    run = program(demo_config(), stack="demo")

    def check() -> None:
        for reg in run.all(DYNAMIC):
            blob = reg.inputs["__provider"]
            assert is_secret(blob)  # the SDK's default: the serialized provider is a secret
            provider = dill.loads(base64.b64decode(blob["value"]))
            assert isinstance(provider, VirtplanProvider)
            assert provider.kind == reg.type[len(DYNAMIC) :].lower()
            # ownership comes from the hosts at each call: no local state file is named
            assert vars(provider) == {"kind": provider.kind, "template_dir": None, "pulumi_stack": "demo"}

    return checks.on(run.settled(check), lambda _: None, "provider")


@pulumi.runtime.test
def test_stack_outputs_per_vm(program: Any, checks: Any) -> pulumi.Output:
    program(demo_config(), stack="demo")
    vms = stack_outputs()["vms"]
    assert set(vms) == {"local/demo-1", "local/demo-2"}

    def check(values: list[Any]) -> None:
        uuid, macs, ips = values
        assert uuid == "uuid-local/vm/demo-1"
        assert macs == ["52:54:00:00:00:00"]
        assert ips == ["10.77.0.10"]

    vm = vms["local/demo-1"]
    return checks.on(pulumi.Output.all(vm["uuid"], vm["macAddresses"], vm["ipAddresses"]), check, "outputs")


@pulumi.runtime.test
def test_secrets_stay_secret(program: Any, checks: Any) -> pulumi.Output:
    run = program({"virtplan:program": str(FEATURES)}, stack="dev")
    web = run.registered.resources["a/vm/web"]

    def check() -> None:
        reg = run.one(DYNAMIC + "VM", "a/web")
        assert is_secret(reg.inputs["cloudInit"])
        assert reg.plain["cloudInit"]["password"] == "hunter2"
        assert is_secret(reg.inputs["graphics"])  # the SDK lifts a nested secret to its container
        assert reg.plain["graphics"] == {"type": "vnc", "listen": "127.0.0.1", "password": "vnc-pass"}
        assert sorted(reg.additional_secret_outputs) == ["cloudInit", "graphics"]
        for other in run.all(DYNAMIC):
            if other is not reg:
                assert other.additional_secret_outputs == []
                assert "hunter2" not in repr(other.inputs) and "vnc-pass" not in repr(other.inputs)

    return checks.all(
        checks.on(run.settled(check), lambda _: None, "wire secrets"),
        checks.on(web.cloudInit.is_secret(), lambda s: _is(s, True), "cloudInit output secret"),
        checks.on(web.memory.is_secret(), lambda s: _is(s, False), "memory output plain"),
    )


def _is(value: object, expected: object) -> None:
    assert value == expected


@pulumi.runtime.test
def test_multi_host_names_references_and_parallelism(program: Any, checks: Any) -> pulumi.Output:
    run = program({"virtplan:program": str(FEATURES), "virtplan:parallelism": 3}, stack="dev")

    def check() -> None:
        names = {r.name for r in run.all(DYNAMIC + "Network")}
        assert names == {"a/lab", "b/lab"}
        root = run.one(DYNAMIC + "Volume", "a/images/web-root.qcow2")
        assert set(root.dependencies) == {
            run.urn(DYNAMIC + "Pool", "a/images"), run.urn(DYNAMIC + "Volume", "a/images/base.qcow2")
        }  # fmt: skip
        assert root.plain["backing"]["name"] == "base.qcow2" and "size" not in root.plain
        web = run.one(DYNAMIC + "VM", "a/web").plain
        assert web["nics"][1] == {"bridge": "br0", "model": "e1000", "mac": "52:54:00:aa:bb:cc"}
        assert web["shutdownTimeout"] == 2.5
        assert {r.plain["host"]["workers"] for r in run.all(DYNAMIC)} == {3.0}
        net_a = run.one(DYNAMIC + "Network", "a/lab").plain
        assert net_a["dhcpRange"] == ["10.20.0.100", "10.20.0.150"]
        assert net_a["reservations"] == [{"vm": "web", "nic": 0.0, "ip": "10.20.0.10"}]
        assert run.one(DYNAMIC + "Network", "b/lab").plain["reservations"] == []

    return checks.on(run.settled(check), lambda _: None, "multi-host")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"virtplan:backend": "terraform"}, "virtplan:backend is 'terraform'"),
        ({"virtplan:hosts": ["local"]}, "write NAME=URI"),
        ({"virtplan:hosts": ["nohost=test:///default"]}, "the stack has no host 'nohost'"),
        ({"virtplan:parallelism": -1}, "virtplan:parallelism is -1"),
        ({"virtplan:program": "stacks/missing.py"}, "no stack program"),
    ],
)
@pulumi.runtime.test
def test_bad_configuration_stops_the_program(program: Any, config: dict[str, Any], message: str) -> None:
    with pytest.raises(pulumi.RunError, match=message):
        program(config, stack="demo")


@pulumi.runtime.test
def test_default_program_is_named_after_the_pulumi_stack(program: Any) -> None:
    with pytest.raises(pulumi.RunError, match=r"no stack program .*stacks/staging\.py for Pulumi stack 'staging'"):
        program({}, stack="staging")


@pulumi.runtime.test
def test_invalid_stack_registers_nothing(program: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from virtplan import VM, Host\nHost('h', uri='test:///default')\nVM('x', memory='lots')\nVM('y', vcpus=0)\n"
    )
    with pytest.raises(pulumi.RunError, match=r"(?s)h/vm/x: memory: .*h/vm/y: vcpus"):
        program({"virtplan:program": str(bad)}, stack="dev")


@pytest.mark.parametrize(
    ("env_uri", "configured", "expected"),
    [
        (None, None, "qemu:///system"),  # the stack file's URI
        ("qemu:///session", None, "qemu:///session"),  # VIRTPLAN_URI overrides the stack's default host
        ("qemu:///session", "local=test:///default", "test:///default"),  # virtplan:hosts overrides both
    ],
)
@pulumi.runtime.test
def test_host_uri_precedence(
    program: Any, checks: Any, monkeypatch: pytest.MonkeyPatch, env_uri: str | None, configured: str | None,
    expected: str,
) -> pulumi.Output:  # fmt: skip
    if env_uri is None:
        monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    else:
        monkeypatch.setenv("VIRTPLAN_URI", env_uri)
    config = demo_config()
    if configured is not None:
        config["virtplan:hosts"] = [configured]
    run = program(config, stack="demo")

    def check() -> None:
        assert {r.plain["host"]["uri"] for r in run.all(DYNAMIC)} == {expected}

    return checks.on(run.settled(check), lambda _: None, "host uri")


def test_placed_vms_are_refused_and_objects_on_several_hosts_registered_per_host(tmp_path: Path) -> None:
    from virtplan.errors import VirtplanError
    from virtplan.pulumi.program import refuse_placement

    program = tmp_path / "spread.py"
    program.write_text(
        "from virtplan import VM, Host, Network\n"
        "hosts = [Host(f'h{i}', uri='test:///default', memory='1GiB', vcpus=2) for i in (1, 2)]\n"
        "net = Network('n', host=hosts, cidr='10.9.0.0/24')\n"
        "VM('pinned', host=hosts[1], nics=[net])\n"
    )
    stack = load_stack(program)
    refuse_placement(stack)  # replicas are plain per-host objects to Pulumi
    assert [r.address for r in stack.managed()] == ["h1/network/n", "h2/network/n", "h2/vm/pinned"]
    program.write_text(program.read_text() + "VM('anywhere', host=hosts)\n")
    with pytest.raises(
        VirtplanError, match=r"VM anywhere: placement \(host=\[\.\.\.\]\) is not supported under Pulumi"
    ):
        refuse_placement(load_stack(program))
