"""A team shares one truth: the hosts. Two checkouts of one repository, in two folders, each
run by its own user with its own HOME and nothing shared on disk, see and manage the same
deployed stack; an unrelated stack that merely shares a file name is refused; renaming the
file or the stack keeps every object; concurrent applies never interleave.

Between every step the local caches are deleted: they must never decide anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from review_support import Cli

from virtplan_lab.testbed import RECORDS_POOL

REPO = Path(__file__).resolve().parents[2]
PROJECT = "team-test"


def checkout(root: Path, name: str) -> Path:
    """A clone of the repository (its stacks and project file) in a folder of its own."""
    folder = root / name
    (folder / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "stacks" / "lab.py", folder / "stacks" / "lab.py")
    (folder / "Pulumi.yaml").write_text(f"name: {PROJECT}\nruntime: python\n")
    return folder


def forget_local(*folders: Path) -> None:
    """Delete everything virtplan may have left on this side: caches, any local record."""
    for folder in folders:
        for leftover in [*folder.rglob(".virtplan"), *folder.rglob(".cache")]:
            shutil.rmtree(leftover, ignore_errors=True)


def foreign_dump(conn: libvirt.virConnect, keep: set[str]) -> dict[str, str]:
    """Full XML of every object whose name is not the stack's (the machine's own state)."""
    out = {}
    for d in conn.listAllDomains():
        if d.name() not in keep:
            out[f"domain/{d.name()}"] = d.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    for n in conn.listAllNetworks():
        if n.name() not in keep:
            out[f"network/{n.name()}"] = n.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
    for p in conn.listAllStoragePools():
        if p.name() in keep or p.name() == RECORDS_POOL:
            continue
        out[f"pool/{p.name()}"] = p.XMLDesc(0)
        for v in p.listAllVolumes():
            out[f"volume/{p.name()}/{v.name()}"] = v.path()
    return out


@pytest.fixture(scope="module")
def team(two_hosts, tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    image = root / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True)
    a, b = two_hosts
    folders = {name: checkout(root, name) for name in ("alice", "bob")}
    clis = {}
    for name, folder in folders.items():
        cli = Cli(a.uri, root / f"home-{name}", cwd=folder)
        cli.env.pop("VIRTPLAN_URI")
        cli.env["VIRTPLAN_LAB_IMAGE"] = str(image)
        clis[name] = cli
    hosts = ["--host", f"kvm1={a.uri}", "--host", f"kvm2={b.uri}"]
    conns = (a.connect(), b.connect())
    # something on both hosts that no stack owns
    for conn in conns:
        conn.networkDefineXML("<network><name>bystander</name><bridge name='vp-bystand'/></network>")
    yield clis, folders, hosts, conns, root
    for conn in conns:
        conn.close()


def test_two_checkouts_manage_one_stack_through_the_hosts(team):
    clis, folders, hosts, (kvm1, kvm2), _ = team
    alice, bob = clis["alice"], clis["bob"]
    lab = "stacks/lab.py"
    before = {c: foreign_dump(c, {"lab-net", "lab-pool", "web1", "web2", "web3", "db1"}) for c in (kvm1, kvm2)}

    out = alice("apply", lab, *hosts, "--yes")
    assert "Apply complete" in out
    forget_local(folders["alice"], alice.home)
    assert not list(folders["alice"].rglob(".virtplan"))  # nothing on alice's disk decides anything

    # bob, from his own clone and home, sees exactly what alice made: no changes
    assert "No changes." in bob("plan", lab, *hosts, "--detailed-exitcode")
    forget_local(folders["bob"], bob.home)

    # bob changes memory and applies; alice then sees no changes and no drift
    stack_b = folders["bob"] / lab
    stack_b.write_text(stack_b.read_text().replace('memory="256MiB"', 'memory="320MiB"', 1))
    assert 'memory="320MiB"' in stack_b.read_text()
    out = bob("apply", lab, *hosts, "--yes")
    assert "Apply complete" in out
    shutil.copy(stack_b, folders["alice"] / lab)  # alice pulls bob's commit
    forget_local(folders["alice"], folders["bob"], alice.home, bob.home)
    assert "No changes." in alice("plan", lab, *hosts, "--detailed-exitcode")
    assert "No changes outside virtplan." in alice("drift", lab, *hosts, "--detailed-exitcode")

    # bob destroys: exactly the stack's objects go, the hosts are otherwise as before
    forget_local(folders["bob"], bob.home)
    bob("destroy", lab, *hosts, "--yes", "--allow-destroy")
    for conn in (kvm1, kvm2):
        assert conn.listAllDomains() == []
        assert [p.name() for p in conn.listAllStoragePools() if p.name() != RECORDS_POOL] == []
        assert foreign_dump(conn, set()) == before[conn]
        records = conn.storagePoolLookupByName(RECORDS_POOL)
        records.refresh(0)
        assert [v for v in records.listVolumes() if v.startswith(f"{PROJECT}~lab.")] == []  # ledger gone too


def test_an_unrelated_stack_with_the_same_file_name_is_refused(team):
    clis, _, hosts, (kvm1, _), root = team
    alice = clis["alice"]
    alice("apply", "stacks/lab.py", *hosts, "--yes")
    try:
        stranger_folder = root / "stranger"
        (stranger_folder / "stacks").mkdir(parents=True)
        (stranger_folder / "stacks" / "lab.py").write_text(
            "from virtplan import Host, Network\n"
            'kvm1 = Host("kvm1", domain_type="qemu")\nHost("kvm2", domain_type="qemu")\n'
            'Network("other-net", host=kvm1, cidr="10.66.0.0/24")\n'
        )
        stranger = Cli(alice.uri, root / "home-stranger", cwd=stranger_folder)
        stranger.env.pop("VIRTPLAN_URI")
        uuids = {d.name(): d.UUIDString() for d in kvm1.listAllDomains()}
        out = stranger("plan", "stacks/lab.py", *hosts, rc=1)
        assert "this stack is 'lab' (no project" in out and f"stack '{PROJECT}/lab'" in out, out
        out = stranger("destroy", "stacks/lab.py", *hosts, "--yes", "--allow-destroy", rc=1)
        assert "a different stack with the same name" in out
        assert {d.name(): d.UUIDString() for d in kvm1.listAllDomains()} == uuids  # untouched
    finally:
        alice("destroy", "stacks/lab.py", *hosts, "--yes", "--allow-destroy")


def test_renaming_the_file_or_the_stack_keeps_every_object(team):
    clis, folders, hosts, (kvm1, kvm2), _ = team
    alice = clis["alice"]
    lab = folders["alice"] / "stacks" / "lab.py"
    text = lab.read_text()
    lab.write_text(
        text.replace(
            "from virtplan import NIC",
            'from virtplan import name_stack\n\nname_stack("lab")\nfrom virtplan import NIC',
            1,
        )
    )
    alice("apply", str(lab), *hosts, "--yes")
    ids = {c: {d.name(): d.UUIDString() for d in c.listAllDomains()} for c in (kvm1, kvm2)}
    try:
        # the file moves within the project: same stack
        moved = folders["alice"] / "stacks" / "renamed-file.py"
        lab.rename(moved)
        assert "No changes." in alice("plan", str(moved), *hosts, "--detailed-exitcode")

        # the stack itself is renamed: a planned move of its marks and records, nothing re-created
        out = alice("stack", "rename", str(moved), "--to", "lab2", *hosts, "--yes")
        assert f"Rename stack '{PROJECT}/lab' to '{PROJECT}/lab2'" in out
        assert "name_stack('lab2')" in moved.read_text()
        forget_local(folders["alice"], alice.home)
        assert "No changes." in alice("plan", str(moved), *hosts, "--detailed-exitcode")
        assert {c: {d.name(): d.UUIDString() for d in c.listAllDomains()} for c in (kvm1, kvm2)} == ids
        owner = ET.fromstring(kvm1.lookupByName("web1").XMLDesc()).find(
            "metadata/{https://virtplan.dev/xmlns/owner/1}owner"
        )
        assert owner is not None and owner.get("stack") == "lab2" and owner.get("project") == PROJECT
    finally:
        alice("destroy", str(moved), *hosts, "--yes", "--allow-destroy")
        moved.rename(lab)
        lab.write_text(text)


def test_two_checkouts_applying_at_once_never_both_proceed(team):
    clis, folders, _, (kvm1, _), _ = team
    alice, bob = clis["alice"], clis["bob"]
    stacks = {name: folders[name] / "stacks" / "race.py" for name in ("alice", "bob")}
    for path in stacks.values():
        path.write_text(
            'from virtplan import VM, Host\nHost("kvm1", domain_type="qemu")\n'
            'VM("race-1", memory="32MiB", state="stopped")\n'
        )
    host = ["--host", f"kvm1={kvm1.getURI()}"]
    contended = 0
    try:
        for round_ in range(20):
            memory = f'memory="{40 + 8 * (round_ % 2)}MiB"'
            for path in stacks.values():
                path.write_text(re.sub(r'memory="\d+MiB"', memory, path.read_text()))
            procs = [
                subprocess.Popen(cli.argv("apply", str(stacks[name]), *host, "--yes"), env=cli.env, cwd=cli.cwd,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for name, cli in (("alice", alice), ("bob", bob))
            ]  # fmt: skip
            outs = [p.communicate(timeout=120)[0] for p in procs]
            applied = [o for o in outs if "Apply complete" in o]
            others = [o for o in outs if "Apply complete" not in o]
            # one of them applies the change; the other either found the lock taken (exit 1,
            # naming the holder) or came second and found nothing left to do (exit 0)
            assert len(applied) == 1, outs
            assert ("is locked by pid" in others[0] and "Nothing was changed" in others[0]) or "No changes." in others[
                0
            ]
            assert [d.name() for d in kvm1.listAllDomains()].count("race-1") == 1  # never a duplicate
            assert f"<currentMemory unit='KiB'>{(40 + 8 * (round_ % 2)) * 1024}</currentMemory>" in (
                kvm1.lookupByName("race-1").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            )
        assert contended > 0  # the two really raced for the lock
    finally:
        alice("destroy", str(stacks["alice"]), *host, "--yes", "--allow-destroy")
