"""Digests of secrets are keyed (HMAC under a per-stack key kept on the host): a guess cannot be
confirmed without the key; seeds without secrets keep a plain digest (a replayed script
matches); seeds virtplan 0.1 wrote are recognised by their old digest."""

from __future__ import annotations

import hashlib

from builders import QEMU_FACTS, declare

from virtplan.documents.render import Renderer
from virtplan.engine import _recognise_legacy_seeds
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.model import VM, CloudInit, Graphics, Host, Pool, Secret, Volume, validate
from virtplan.model.secrets import keyed_digest


def stack(**ci):
    with declare() as s:
        Host("h", "test:///default")
        pool = Pool("p", path="/p")
        VM("v", memory="64MiB", disks=[Volume("d", pool=pool, size="1GiB")], cloud_init=CloudInit(**ci),
           graphics=Graphics("vnc", password="vncpw"))  # fmt: skip
    validate(s)
    return s


def test_secret_digests_depend_on_the_key_and_never_equal_an_unkeyed_hash():
    s = stack(user="ops", password="guess-me")
    a = Renderer(s, {"h": QEMU_FACTS}, keys={"h": b"k" * 32})
    b = Renderer(s, {"h": QEMU_FACTS}, keys={"h": b"j" * 32})
    vm = s.vms[0]
    assert a.seed_digest(vm) != b.seed_digest(vm)
    gfx_a = a.domain_context(vm).graphics_password_digest
    assert gfx_a == keyed_digest(b"k" * 32, "vncpw") != b.domain_context(vm).graphics_password_digest
    unkeyed = {Secret("vncpw").digest(), hashlib.sha256(b"vncpw").hexdigest()}
    assert gfx_a not in unkeyed
    assert Secret("guess-me").digest()[:16] not in a.seed_files(vm, reveal_secrets=False)["user-data"]


def test_a_seed_without_secrets_has_a_plain_digest_and_raw_documents_are_secret_by_default():
    plain = stack(hostname="v", ssh_keys=["ssh-ed25519 AAAA k"])
    r1 = Renderer(plain, {"h": QEMU_FACTS}, keys={"h": b"k" * 32})
    r2 = Renderer(plain, {"h": QEMU_FACTS})
    assert r1.seed_digest(plain.vms[0]) == r2.seed_digest(plain.vms[0])  # no key needed: nothing secret
    raw = stack(user_data="#cloud-config\npassword: hunter2\n")
    assert isinstance(raw.vms[0].cloud_init.user_data, Secret)
    masked = Renderer(raw, {"h": QEMU_FACTS}).seed_files(raw.vms[0], reveal_secrets=False)["user-data"]
    assert "hunter2" not in masked and masked.startswith("(sensitive:")
    shown = stack(user_data="#cloud-config\nrole: web\n", sensitive=False)
    assert shown.vms[0].cloud_init.user_data == "#cloud-config\nrole: web\n"


def test_a_seed_of_virtplan_0_1_is_recognised_by_its_old_digest():
    s = stack(user="ops", password="pw")
    r = Renderer(s, {"h": QEMU_FACTS}, keys={"h": b"k" * 32})
    vm = s.vms[0]
    old = r.seed_digest(vm, legacy=True)
    assert old != r.seed_digest(vm)
    host = HostState("h", "test:///default", QEMU_FACTS)
    host.objects[("vm", "v")] = ObservedObject("vm", "v", "u", "<domain/>", {"cloud_init": old})
    _recognise_legacy_seeds(s, {"h": host}, r)
    assert host.objects[("vm", "v")].spec["cloud_init"] == r.seed_digest(vm)
    host.objects[("vm", "v")].spec["cloud_init"] = "something else"
    _recognise_legacy_seeds(s, {"h": host}, r)
    assert host.objects[("vm", "v")].spec["cloud_init"] == "something else"


def test_a_seed_recorded_by_virtplan_0_1_is_not_drift():
    from virtplan.plan.drift import detect

    s = stack(user="ops", password="pw")
    r = Renderer(s, {"h": QEMU_FACTS}, keys={"h": b"k" * 32})
    vm = s.vms[0]
    host = HostState("h", "test:///default", QEMU_FACTS)
    host.objects[("vm", "v")] = ObservedObject(
        "vm", "v", "u", "<domain/>", {"cloud_init": r.seed_digest(vm, legacy=True)}
    )
    _recognise_legacy_seeds(s, {"h": host}, r)  # as observe does

    class Store:
        def view(self, uri):
            return {"h/vm/v": {"kind": "vm", "applied": {"cloud_init": r.seed_digest(vm, legacy=True)}}}

    assert detect(s, {"h": host}, Store(), r).empty  # type: ignore[arg-type]
    host.objects[("vm", "v")].spec["cloud_init"] = "a seed changed since"
    assert not detect(s, {"h": host}, Store(), r).empty
