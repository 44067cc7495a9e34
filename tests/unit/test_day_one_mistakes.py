"""Mistakes made in Python on day one get virtplan-quality errors (issue 16, first section):
misspelled fields with file:line and "did you mean", wrong types reported together as field
errors, keys and password without `user`, sizes without units, a network the stack does not
manage, and a stack that exits early."""

from __future__ import annotations

import os
from pathlib import Path

from builders import QEMU_FACTS, declare
from hostile_support import error_lines, run_cli

from virtplan.documents.render import Renderer
from virtplan.engine import Engine
from virtplan.model import CloudInit, Host, Pool, Volume, load_stack, validate
from virtplan.model.resources import VM


def cli_in(folder: Path, *args: str) -> tuple[int, str, str]:
    here = Path.cwd()
    os.chdir(folder)
    try:
        return run_cli(*args)
    finally:
        os.chdir(here)


def test_a_misspelled_field_names_file_line_resource_and_the_field_meant(tmp_path):
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "typo.py").write_text(
        'from virtplan import VM, Host\n\nHost("local", "test:///default")\nVM("x", memroy="64MiB")\n'
    )
    code, _out, err = cli_in(tmp_path, "plan", "stacks/typo.py")  # relative, as the README runs it
    assert code == 1
    assert "  - local/vm/x: memroy: VM() has no field 'memroy' (stacks/typo.py:4); did you mean 'memory'?" in err


def test_wrong_types_are_field_errors_reported_together(tmp_path):
    stack = tmp_path / "types.py"
    stack.write_text("""\
from virtplan import NIC, VM, CloudInit, Host, Network, Pool, Volume

Host("local", "test:///default")
net = Network("demo-net", cidr="10.3.0.0/24")
disk = Volume("d.qcow2", pool=Pool("p", path="/p"), size="1GiB")
VM("x", memory="64MiB", disks=disk, nics=["default"])
VM("y", memory="64MiB", nics=[NIC("demo-net")], cloud_init=CloudInit(packages="htop"))
""")
    code, _out, err = run_cli("plan", str(stack))
    assert code == 1 and "internal error" not in err
    found = {(m["address"], m["field"]): m["message"] for m in error_lines(err)}
    assert (
        found[("local/vm/x", "disks")]
        == "expected a list of Volume or Disk, got Volume <Volume local/volume/p/d.qcow2>"
    )
    assert found[("local/vm/x", "nics[0]")].startswith("expected a NIC or a Network of this stack")
    assert "Network(name, existing=True)" in found[("local/vm/x", "nics[0]")]
    assert found[("local/vm/y", "nics[0].network")].endswith("got str 'demo-net'")
    assert found[("local/vm/y", "cloud_init.packages")].startswith("expected a list of strings such as ['nginx']")


def test_keys_and_password_without_user_are_for_the_default_user():
    def stack(password: str):
        with declare() as s:
            Host("h", "test:///default")
            pool = Pool("p", path="/p")
            VM("v", memory="64MiB", disks=[Volume("d", pool=pool, size="1GiB")],
               cloud_init=CloudInit(hostname="v", ssh_keys=["ssh-ed25519 AAAA me"], password=password))  # fmt: skip
        validate(s)
        return s

    first, second = stack("one-password"), stack("another-one")
    renderer = Renderer(first, {"h": QEMU_FACTS})
    user_data = renderer.seed_files(first.vms[0])["user-data"]
    assert 'ssh_authorized_keys:\n  - "ssh-ed25519 AAAA me"' in user_data
    assert 'password: "one-password"' in user_data and "ssh_pwauth: true" in user_data
    assert "users:" not in user_data  # the image's own default user
    other = Renderer(second, {"h": QEMU_FACTS})
    assert renderer.seed_digest(first.vms[0]) != other.seed_digest(second.vms[0]), "a new password is a change"


def test_a_size_without_a_unit_below_1mib_is_an_error_with_the_fix(tmp_path):
    stack = tmp_path / "size.py"
    stack.write_text('from virtplan import Host, Pool, Volume\nHost("local", "test:///default")\n'
                     'Volume("v", pool=Pool("p", path="/p"), size=20)\nVolume("w", pool=Pool("q", path="/q"), size="20B")\n')  # fmt: skip
    code, _out, err = run_cli("plan", str(stack))
    assert code == 1
    assert ("local/volume/p/v: size: 20 has no unit, so it means 20 bytes; write '20GiB' or '20MiB' "
            "(or '20B' if you mean bytes)") in err  # fmt: skip
    assert "local/volume/q/w" not in err  # bytes said explicitly are taken as said


def test_a_network_the_stack_does_not_manage_is_read_never_changed(tmp_path):
    stack = tmp_path / "existing.py"
    stack.write_text("""\
from virtplan import NIC, VM, Host, Network, name_stack

name_stack("existing-net")
Host("local", "test:///default")
default = Network("default", existing=True)  # libvirt's own NAT network
VM("guest", memory="64MiB", nics=[default, NIC(default)])
""")
    with Engine(load_stack(stack)) as engine:
        conn = engine.connection("local")
        before = conn.networkLookupByName("default").XMLDesc(0)
        plan, observation = engine.plan()
        assert [(c.address, c.action.value) for c in plan.changes] == [("local/vm/guest", "create")]
        assert 'source network="default"' in observation.renderer.domain_xml(engine.stack.vms[0])
        engine.apply(plan, observation)
        assert engine.plan()[0].empty
        plan, observation = engine.plan(destroy=True)
        assert [c.address for c in plan.changes] == ["local/vm/guest"], "destroy leaves the network alone"
        engine.apply(plan, observation)
        assert conn.networkLookupByName("default").XMLDesc(0) == before


def test_a_stack_that_exits_is_an_error_not_a_success(tmp_path):
    stack = tmp_path / "exits.py"
    stack.write_text('import sys\nfrom virtplan import Host\nHost("local", "test:///default")\nsys.exit(0)\n')
    code, _out, err = run_cli("apply", str(stack), "--yes")
    assert code == 1 and "called sys.exit(0)" in err and "exits.py:4" in err and "Nothing was changed" in err
