"""A stack program reading its own Pulumi config, and secrets that never show in plain text.

stacks/configured.py (copied into the project) takes `vmCount` and two secrets from
`pulumi config set`. The guests prove from inside that the secret user-data reached them
(their report carries its SHA-256) and libvirt holds the VNC password; yet neither secret
appears in any command's output, the state file, `pulumi stack export`, the stack's config
file or anything else Pulumi or virtplan wrote - while `stack export --show-secrets` proves
they are in the state, encrypted.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import libvirt
from engine_support import Project, summary

from virtplan_lab.probe import wait_for_guest_line
from virtplan_lab.testbed import PrivateHost

HERE = Path(__file__).resolve().parent
ROOT_PASSWORD = "Sekr1t-root-7x9q"
VNC_PASSWORD = "vnc-9k2q"  # VNC allows at most 8 characters
SECRETS = (ROOT_PASSWORD, VNC_PASSWORD)
BOOT_TIMEOUT = 120.0


def user_data(vm: str) -> str:
    """What stacks/configured.py declares for `vm`, with the secret filled in."""
    return f"#cloud-config\nprobe_value: {vm}\nchpasswd: {{expire: false}}\npassword: {ROOT_PASSWORD}\n"


def leaks(root: Path) -> list[str]:
    """Files under `root` holding either secret in plain text."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {s[:3]}..." for s in SECRETS if s.encode() in data]
    return found


def test_config_and_secrets_through_the_pulumi_cli(
    pulumi_bin: Path, private_host: PrivateHost, probe_image: object, tmp_path: Path
) -> None:
    project = Project(tmp_path / "project", tmp_path, passphrase="secrets-test passphrase")
    shutil.copy(HERE / "stacks" / "configured.py", project.root / "stacks" / "configured.py")
    conn = private_host.connect()

    project.run("stack", "init", "configured")
    project.run("config", "set", "--path", "virtplan:hosts[0]", f"local={private_host.uri}")
    project.run("config", "set", "vmCount", "2")
    project.run("config", "set", "--secret", "rootPassword", ROOT_PASSWORD)
    project.run("config", "set", "--secret", "vncPassword", VNC_PASSWORD)
    stack_file = (project.root / "stacks" / "Pulumi.configured.yaml").read_text()
    assert "virtplan:rootPassword:\n    secure: " in stack_file and 'virtplan:vmCount: "2"' in stack_file

    preview = project.run("preview", "--diff")
    assert summary(preview.text) == {"create": 10}, preview.text  # vmCount=2: two VMs with their disks
    assert "cloudInit      : [secret]" in preview.text
    project.run("up", "--yes")

    # The guests got the secret user-data (its hash, reported from inside) and libvirt the VNC password.
    for vm in ("cfg-1", "cfg-2"):
        assert private_host.pid is not None
        log = Path(f"/proc/{private_host.pid}/root/var/lib/libvirt/images/cfg/{vm}-console.log")
        report = wait_for_guest_line(log, BOOT_TIMEOUT)
        assert (report["hostname"], report["value"]) == (vm, vm)
        assert report["userdata_sha256"] == hashlib.sha256(user_data(vm).encode()).hexdigest()
        assert f"passwd='{VNC_PASSWORD}'" in conn.lookupByName(vm).XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)

    # Fewer VMs from config: the preview deletes cfg-2 and its disk, up does it.
    project.run("config", "set", "vmCount", "1")
    preview = project.run("preview")
    assert summary(preview.text) == {"delete": 2, "unchanged": 8}, preview.text
    project.run("up", "--yes")
    assert [d.name() for d in conn.listAllDomains()] == ["cfg-1"]

    # Secrets are in the state (encrypted), and nowhere in plain text.
    outputs = project.run("stack", "output", "--json", "--show-secrets").json()
    assert set(outputs) == {"vms", "networks", "pools", "volumes"}
    exported = project.run("stack", "export")
    assert '"ciphertext"' in exported.stdout
    revealed = project.run("stack", "export", "--show-secrets")
    project.outputs.remove(revealed.text)  # the one output that must show them
    assert all(s in revealed.stdout for s in SECRETS)
    assert all(s not in exported.stdout for s in SECRETS)
    assert all(s not in project.state_file("configured").read_text() for s in SECRETS)
    project.run("destroy", "--yes")
    assert conn.listAllDomains() == []
    assert [text[:200] for text in project.outputs if any(s in text for s in SECRETS)] == []
    assert leaks(tmp_path) == []
    conn.close()
