"""`--replace ADDRESS` and `--target ADDRESS` for plan, apply and destroy, as in Terraform
(issue 11, item 11), against a real private host through the CLI."""

from __future__ import annotations

import libvirt
import pytest
from review_support import Cli

HEADER = 'from virtplan import VM, Host, Network\nHost("h", uri="qemu:///system", domain_type="qemu")\n'
NET = 'net = Network("tg-net", cidr="10.101.0.0/24")\n'


def vms(memory: str = "64MiB", extra: str = "") -> str:
    return (
        HEADER
        + NET
        + "".join(
            f'VM("tg-{c}", memory="{memory}", max_memory="256MiB", nics=[net], shutdown_timeout=0)\n' for c in "ab"
        )
        + extra
    )


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    home = tmp_path_factory.mktemp("target")
    cli = Cli(private_host.uri, home / "user", cwd=home)
    stack = home / "target.py"
    stack.write_text(vms())
    cli("apply", str(stack), "--yes")
    conn = private_host.connect()
    yield cli, stack, conn
    cli("destroy", str(stack), "--yes", "--allow-destroy")
    conn.close()


def test_replace_recreates_a_matching_vm(env):
    cli, stack, conn = env
    before = conn.lookupByName("tg-a").UUIDString()
    plan = cli("plan", str(stack), "--replace", "h/vm/tg-a")
    assert "-/+ vm tg-a  replace: replacement requested (--replace)" in plan and "tg-b" not in plan, plan
    cli("apply", str(stack), "--yes", "--allow-destroy", "--replace", "h/vm/tg-a")
    assert conn.lookupByName("tg-a").UUIDString() != before and conn.lookupByName("tg-a").isActive()
    assert cli.run("plan", str(stack), "--detailed-exitcode").returncode == 0


def test_replace_of_an_address_the_stack_does_not_declare_is_refused(env):
    cli, stack, _ = env
    out = cli("plan", str(stack), "--replace", "h/vm/nope", rc=1)
    assert "h/vm/nope: --replace: the stack declares no such resource" in out, out


def test_target_applies_only_that_address_and_what_it_waits_for(env):
    cli, stack, conn = env
    extra = 'net2 = Network("tg-net2", cidr="10.102.0.0/24")\n'
    extra += (
        'VM("tg-c", memory="64MiB", nics=[net2], shutdown_timeout=0)\nVM("tg-d", memory="64MiB", shutdown_timeout=0)\n'
    )
    stack.write_text(vms(memory="128MiB", extra=extra))
    out = cli("apply", str(stack), "--yes", "--target", "h/vm/tg-c")
    assert "limited to --target h/vm/tg-c" in out, out
    assert conn.lookupByName("tg-c").isActive() and conn.networkLookupByName("tg-net2").isActive()
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("tg-d")
    config = conn.lookupByName("tg-a").XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<currentMemory unit='KiB'>65536</currentMemory>" in config, "tg-a was not targeted: its memory stays"
    plan = cli("plan", str(stack))
    assert "+ vm tg-d" in plan and "~ vm tg-a" in plan and "tg-c" not in plan, plan
    cli("apply", str(stack), "--yes", "--target", "h/vm/tg-a")
    plan = cli("plan", str(stack))
    assert "~ vm tg-a" not in plan and "~ vm tg-b" in plan, plan
    assert "No changes outside virtplan" in cli("drift", str(stack))


def test_destroy_target_deletes_that_object_and_what_must_go_before_it(env):
    cli, stack, conn = env
    out = cli("destroy", str(stack), "--yes", "--allow-destroy", "--target", "h/network/tg-net2")
    assert "delete h/vm/tg-c" in out and "delete h/network/tg-net2" in out and "tg-a" not in out.split("note:")[0], out
    assert {"tg-a", "tg-b"} <= {d.name() for d in conn.listAllDomains()}
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName("tg-c")


def test_target_of_an_address_nobody_has_is_refused(env):
    cli, stack, _ = env
    out = cli("plan", str(stack), "--target", "h/vm/ghost", rc=1)
    assert "h/vm/ghost: --target: neither the stack nor its hosts have it" in out, out
