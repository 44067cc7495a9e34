"""stacks/lab.py (two hosts) under the SDK's mocks, with both backends."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from virtplan.model import load_stack

REPO = Path(__file__).resolve().parents[2]
DYNAMIC = "pulumi-python:dynamic/virtplan:"
TYPES = {"network": "Network", "pool": "Pool", "volume": "Volume", "vm": "VM"}


@pytest.fixture(autouse=True)
def _lab_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    image = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "1G"], check=True)
    monkeypatch.setenv("VIRTPLAN_LAB_IMAGE", str(image))
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    monkeypatch.setenv("VIRTPLAN_STATE_DIR", str(tmp_path / "state"))


def lab_config() -> dict[str, Any]:
    return yaml.safe_load((REPO / "stacks" / "Pulumi.lab.yaml").read_text())["config"]


@pulumi.runtime.test
def test_lab_registers_both_hosts_resources_with_their_references(program: Any, checks: Any) -> pulumi.Output:
    config = lab_config()
    hosts = dict(item.split("=", 1) for item in config["virtplan:hosts"])
    expected = load_stack(REPO / "stacks" / "lab.py", hosts)
    run = program(config, stack="lab")

    def check() -> None:
        got = {(r.type, r.name) for r in run.all()}
        want = {(DYNAMIC + TYPES[r.kind], f"{r.host.name}/{r.key}") for r in expected.managed()}  # type: ignore[union-attr]
        assert got == want and len(want) == 15
        for r in expected.managed():
            reg = run.one(DYNAMIC + TYPES[r.kind], f"{r.host.name}/{r.key}")  # type: ignore[union-attr]
            deps = {run.urn(DYNAMIC + TYPES[d.kind], f"{d.host.name}/{d.key}") for d in r.dependencies()}  # type: ignore[union-attr]
            assert set(reg.dependencies) == deps, r.address
            assert reg.plain["host"]["uri"] == hosts[r.host.name]  # type: ignore[union-attr]
            assert reg.plain["host"]["workers"] == 2.0  # virtplan:parallelism
        web2 = run.one(DYNAMIC + "VM", "kvm1/web2").plain
        assert web2["disks"][0]["volume"]["backing"]["name"] == "base.qcow2"
        assert web2["nics"][0]["ip"] == "10.20.1.12" and web2["cloudInit"]["packages"] == ["nginx"]
        db1 = run.one(DYNAMIC + "VM", "kvm2/db1").plain
        assert [d["volume"]["name"] for d in db1["disks"]] == ["db1.qcow2", "db1-data.raw"]

    return checks.on(run.settled(check), lambda _: None, "lab registrations")


def test_lab_is_refused_by_the_bridged_backend_with_every_reason(program: Any) -> None:
    with pytest.raises(Exception) as info:
        program({**lab_config(), "virtplan:backend": "pulumi-libvirt"}, stack="lab")
    message = str(info.value)
    assert "nothing was registered" in message
    for vm in ("kvm1/vm/web1", "kvm1/vm/web2", "kvm1/vm/web3"):
        assert f"{vm}: max_memory" in message
    assert "kvm2/vm/db1: disks[0].boot" in message and "kvm2/vm/db1: console_log" in message
