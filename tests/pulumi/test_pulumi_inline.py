"""deploy() and text() under the SDK's mocks (the real engine runs them in tests/pulumi_engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest

DYNAMIC = "pulumi-python:dynamic/virtplan:"

MAIN = """
import pulumi
from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume
from virtplan.pulumi import deploy, text

key = pulumi.Output.from_input("ssh-ed25519 AAAAkey ops@x")
password = pulumi.Output.secret("pw-123")
with deploy({name}) as registered:
    {host}
    net = Network("n", cidr="10.1.0.0/24")
    pool = Pool("p", path="/srv/p")
    VM(
        "vm",
        memory={memory!r},
        disks=[Volume("d", pool=pool, size="1GiB")],
        nics=[NIC(net)],
        cloud_init=CloudInit(meta_data=f"instance-id: {{text(key)}}\\n", user="ops", ssh_keys=[text(key)],
                             password=text(password)),
        graphics=Graphics("vnc", password=text(password)),
    )
pulumi.export("vms", registered.outputs["vms"])
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    monkeypatch.setenv("VIRTPLAN_STATE_DIR", str(tmp_path / "state"))


def main_file(tmp_path: Path, name: str = "", host: str = "Host('h', uri='test:///default')", memory: str = "256MiB"):
    path = tmp_path / "__main__.py"
    path.write_text(MAIN.format(name=repr(name) if name else "", host=host, memory=memory))
    return path


@pulumi.runtime.test
def test_deploy_registers_the_block_and_text_puts_outputs_in(program: Any, checks: Any, tmp_path: Path) -> Any:
    run = program({}, stack="dev", main=main_file(tmp_path))

    def check() -> None:
        vm = run.one(DYNAMIC + "VM", "h/vm")
        assert (vm.plain["project"], vm.plain["stack"]) == ("virtplan", "dev")  # the Pulumi project and stack
        ci = vm.plain["cloudInit"]
        assert ci["metaData"] == "instance-id: ssh-ed25519 AAAAkey ops@x\n"  # inside an f-string
        assert ci["sshKeys"] == ["ssh-ed25519 AAAAkey ops@x"] and ci["password"] == "pw-123"
        assert vm.plain["graphics"]["password"] == "pw-123"
        assert "\x00" not in repr(vm.plain)  # no stand-in left anywhere
        assert {r.name for r in run.all(DYNAMIC)} == {"h/n", "h/p", "h/p/d", "h/vm"}

    return checks.on(run.settled(check), lambda _: None, "inline registrations")


@pulumi.runtime.test
def test_deploy_names_the_stack_and_adds_the_implicit_host(program: Any, checks: Any, tmp_path: Path) -> Any:
    run = program({"virtplan:hosts": ["local=test:///default"]}, stack="dev", main=main_file(tmp_path, "lab", ""))

    def check() -> None:
        vm = run.one(DYNAMIC + "VM", "local/vm").plain
        assert vm["stack"] == "lab" and vm["host"]["uri"] == "test:///default"

    return checks.on(run.settled(check), lambda _: None, "implicit host")


@pulumi.runtime.test
def test_deploy_validates_the_whole_block_first(program: Any, tmp_path: Path) -> None:
    with pytest.raises(
        pulumi.RunError, match=r"virtplan: stack is invalid \(1 error\)(.|\n)*h/vm/vm: memory: cannot read size"
    ):
        program({}, stack="dev", main=main_file(tmp_path, memory="lots"))
