"""stacks/lab.py on two private hosts through Pulumi's Python Automation API (lab_automation.py).

The script is what a user would write: an inline program calling virtplan's Pulumi program,
`PulumiCommand(root=...)` pointing at the engine built here. It runs offline, in its own network
namespace, once per step, so each step starts from what the file backend recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import libvirt
import pytest
from engine_support import engine_bin, offline

from virtplan_lab.testbed import PrivateHost, user_pools

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DB1_URN_END = "::pulumi-python:dynamic/virtplan:VM::kvm2/db1"


class Lab:
    def __init__(self, work: Path, hosts: tuple[PrivateHost, PrivateHost]) -> None:
        self.work = work
        self.program = work / "lab.py"
        self.program.write_text((REPO / "stacks" / "lab.py").read_text())
        self.image = work / "base.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(self.image), "64M"], check=True)
        self.hosts = {"kvm1": hosts[0], "kvm2": hosts[1]}

    def step(self, name: str) -> dict[str, Any]:
        argv = [sys.executable, str(HERE / "lab_automation.py"), name, "--work", str(self.work)]
        argv += ["--engine", str(engine_bin().parent), "--program", str(self.program)]
        argv += [f"--host={n}={h.uri}" for n, h in self.hosts.items()]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "VIRTPLAN_URI"))}
        env.update(
            PULUMI_BACKEND_URL=f"file://{self.work / 'backend'}",
            PULUMI_CONFIG_PASSPHRASE="lab passphrase",
            PULUMI_SKIP_UPDATE_CHECK="true",
            PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION="true",
            VIRTPLAN_LAB_IMAGE=str(self.image),
        )
        done = subprocess.run(offline(argv), env=env, capture_output=True, text=True, timeout=900, cwd=self.work)
        assert done.returncode == 0, f"step {name} failed:\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout.strip().splitlines()[-1])

    def conn(self, host: str) -> libvirt.virConnect:
        return libvirt.open(self.hosts[host].uri)


@pytest.fixture(scope="module")
def lab(two_hosts: tuple[PrivateHost, PrivateHost], tmp_path_factory: pytest.TempPathFactory) -> Lab:
    return Lab(tmp_path_factory.mktemp("lab"), two_hosts)


def names(conn: libvirt.virConnect) -> dict[str, list[str]]:
    return {
        "domains": sorted(d.name() for d in conn.listAllDomains() if d.isActive()),
        "networks": sorted(n.name() for n in conn.listAllNetworks()),
        "volumes": sorted(v.name() for p in conn.listAllStoragePools() for v in p.listAllVolumes()),
    }


def test_lab_through_the_automation_api(pulumi_bin: Path, lab: Lab) -> None:
    config = lab.step("init")["config"]
    assert json.loads(config["virtplan:hosts"]) == [f"kvm1={lab.hosts['kvm1'].uri}", f"kvm2={lab.hosts['kvm2'].uri}"]

    preview = lab.step("preview")
    assert preview["changes"] == {"create": 16}  # 15 resources and the stack
    assert lab.conn("kvm1").listAllDomains() == []

    up = lab.step("up")
    assert up["changes"] == {"create": 16}
    kvm1, kvm2 = lab.conn("kvm1"), lab.conn("kvm2")
    assert names(kvm1)["domains"] == ["web1", "web2", "web3"] and names(kvm2)["domains"] == ["db1"]
    assert "web2-cidata.iso" in names(kvm1)["volumes"] and "db1-data.raw" in names(kvm2)["volumes"]
    vms = up["outputs"]["vms"]["value"]
    assert vms["kvm1/web2"]["ipAddresses"] == ["10.20.1.12"] and vms["kvm2/db1"]["ipAddresses"] == ["10.20.2.10"]
    assert vms["kvm2/db1"]["uuid"] == kvm2.lookupByName("db1").UUIDString()
    assert (
        up["outputs"]["networks"]["value"]["kvm2/lab-net"]["bridgeName"]
        == kvm2.networkLookupByName("lab-net").bridgeName()
    )

    assert lab.step("up")["changes"] == {"same": 16}

    # A cloud-init change restarts db1: Pulumi says "update", virtplan's warning says how.
    db1_id = kvm2.lookupByName("db1").ID()
    text = lab.program.read_text()
    assert 'packages=["postgresql"]' in text
    lab.program.write_text(text.replace('packages=["postgresql"]', 'packages=["postgresql", "pgbouncer"]'))
    preview = lab.step("preview")
    assert preview["changes"] == {"update": 1, "same": 15}
    restart = [m for urn, m in preview["warnings"] if urn.endswith(DB1_URN_END)]
    assert restart == ["virtplan: kvm2/vm/db1: restart: cloud_init changed; cloud_init take effect after a restart"]
    up = lab.step("up")
    assert up["changes"] == {"update": 1, "same": 15}
    assert kvm2.lookupByName("db1").isActive() and kvm2.lookupByName("db1").ID() != db1_id  # restarted
    assert [u for u, _ in up["warnings"] if u.endswith(DB1_URN_END)]  # shown during up too

    assert lab.step("refresh")["changes"] == {"same": 16}

    destroy = lab.step("destroy")
    assert destroy["changes"] == {"delete": 16}
    for conn in (kvm1, kvm2):
        assert names(conn) == {"domains": [], "networks": [], "volumes": []}
        assert conn.listAllDomains() == [] and user_pools(conn) == []  # virtplan's records pool stays, empty
        conn.close()
