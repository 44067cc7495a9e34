"""Your own Pulumi project using virtplan: `pulumi new` from examples/pulumi-project, then up.

The template declares VMs inline with `virtplan.pulumi.deploy()`, reads its own config and
puts two Pulumi values into cloud-init with `text()`: the public half of an SSH key that
another resource in the program generates, and a secret password. The guest (the probe,
booted directly from the kernel and initrd given as config) reads the seed that holds them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import libvirt
from engine_support import REPO, Project, summary

from virtplan.documents.seed import read_seed_iso
from virtplan_lab.probe import ProbeImage, wait_for_guest_line
from virtplan_lab.testbed import PrivateHost, user_pools

PASSWORD = "t3mplate-Passw0rd"
BOOT_TIMEOUT = 120.0


def download(conn: libvirt.virConnect, pool: str, name: str) -> bytes:
    vol = conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
    stream = conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    chunks: list[bytes] = []
    stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
    stream.finish()
    return b"".join(chunks)


def test_a_project_from_the_template(
    pulumi_bin: Path, private_host: PrivateHost, probe_image: ProbeImage, tmp_path: Path
) -> None:
    project = Project(tmp_path / "my-vms", tmp_path, passphrase="template passphrase", source=None)
    project.run("new", str(REPO / "examples" / "pulumi-project"), "--generate-only", "--yes", "--name", "my-vms",
                "--description", "VMs of the template test")  # fmt: skip
    assert (project.root / "__main__.py").read_text() == (REPO / "examples/pulumi-project/__main__.py").read_text()
    assert "name: my-vms" in (project.root / "Pulumi.yaml").read_text()
    project.use_venv("venv")  # the template's virtualenv, here the one running the tests

    project.run("stack", "init", "dev")
    settings = {
        "uri": private_host.uri,
        "domainType": "qemu",
        "vmCount": "1",
        "memory": "128MiB",
        "kernel": str(probe_image.kernel),
        "initrd": str(probe_image.initrd),
        "cmdline": probe_image.cmdline,
    }
    for key, value in settings.items():
        project.run("config", "set", key, value)
    project.run("config", "set", "--secret", "rootPassword", PASSWORD)

    preview = project.run("preview")
    # The key, and the stack's network, pool, kernel, initrd, disk and VM (plus the Pulumi stack).
    assert summary(preview.text) == {"create": 8}, preview.text
    project.run("up", "--yes")

    outputs = project.run("stack", "output", "--json").json()
    assert outputs["privateKey"] == "[secret]"
    public_key = outputs["publicKey"]
    assert public_key.startswith("ssh-ed25519 ") and public_key.endswith(" ops@my-vms-dev")

    # The seed holds the generated key and the password; the guest read exactly that seed.
    conn = private_host.connect()
    user_data = read_seed_iso(download(conn, "vms", "vm-1-cidata.iso"))["user-data"]
    assert f'- "{public_key}"' in user_data and f'password: "{PASSWORD}"' in user_data
    assert private_host.pid is not None
    log = Path(f"/proc/{private_host.pid}/root/var/lib/libvirt/images/my-vms-dev/vm-1-console.log")
    report = wait_for_guest_line(log, BOOT_TIMEOUT)
    assert report["hostname"] == "vm-1"
    assert report["userdata_sha256"] == hashlib.sha256(user_data.encode()).hexdigest()
    vms = outputs["vms"]
    assert vms["local/vm-1"]["uuid"] == conn.lookupByName("vm-1").UUIDString()
    assert vms["local/vm-1"]["macAddresses"] == [report["mac"]]

    project.run("up", "--yes", "--expect-no-changes")
    project.run("destroy", "--yes")
    assert conn.listAllDomains() == [] and conn.listAllNetworks() == [] and user_pools(conn) == []
    assert [t[:200] for t in project.outputs if PASSWORD in t] == []
    conn.close()
