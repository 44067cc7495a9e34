"""The one code writer: generated programs declare exactly the objects they were written
from, every VM field included, and never hold a secret."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest

from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Resource, Stack, Volume, collecting
from virtplan.model import load_stack as load
from virtplan.units import parse_size
from virtplan.workflows.codegen import SIZE_KEYWORDS, Code, Writer, arguments, import_line

#: A value other than the default for every VM constructor parameter; a new VM field must
#: be added here, and this test then proves generated programs carry it.
VM_VALUES = {
    "vcpus": 2, "memory": "256MiB", "max_vcpus": 4, "max_memory": "1GiB", "machine": "q35", "arch": "x86_64",
    "firmware": "uefi", "graphics": Graphics("spice", listen="0.0.0.0"), "serial": True, "autostart": True,
    "state": "stopped", "description": 'a "quoted" <description>', "shutdown_timeout": 5.0,
    "shutdown_on_delete": True, "renamed_from": "web-old",
    "cmdline": "console=ttyS0", "console_log": False,
    "cloud_init": CloudInit(user="ops", ssh_keys=["ssh-ed25519 AAAA"], packages=["curl"], hostname="w"),
}  # fmt: skip
REFERENCES = {"name", "host", "disks", "nics", "kernel", "initrd"}  # set from the objects below


def shape(value: object) -> object:
    """A comparable form: resources by kind and name, parts field by field."""
    if isinstance(value, Resource):
        return (value.kind, value.name)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, {f.name: shape(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [shape(v) for v in value]
    return value


def described(r: Resource) -> dict[str, object]:
    """A resource's constructor arguments, comparable (sizes in bytes)."""
    return {k: parse_size(v) if k in SIZE_KEYWORDS and v is not None else shape(v) for k, v in arguments(r).items()}


def write_and_load(tmp_path: Path, declare) -> tuple[Stack, Stack]:
    """Build objects with `declare(writer)` -> program lines; return (built, loaded) stacks."""
    built = Stack("built")
    w = Writer()
    with collecting(built):
        lines = declare(w)
    text = "\n".join([import_line(sorted(w.used)), "", *lines]) + "\n"
    path = tmp_path / "generated.py"
    path.write_text(text)
    compile(text, str(path), "exec")
    return built, load(path)


def test_every_vm_field_is_written_and_read_back(tmp_path):
    assert set(inspect.signature(VM).parameters) == set(VM_VALUES) | REFERENCES, "give the new VM field a value"

    def declare(w: Writer) -> list[str]:
        host = Host("h", "test:///default", domain_type="qemu", workers=2)
        pool = Pool("p", path="/srv/p", autostart=False, host=host)
        net = Network("n", host=host, mode="route", cidr="10.1.0.0/24", dhcp_range=("10.1.0.50", "10.1.0.60"))
        base = Volume("base.qcow2", pool=pool, size=3 * 1024**3)
        root = Volume("root.qcow2", pool=pool, backing=base)
        data = Volume("data.raw", pool=pool, size="10GiB", format="raw")
        frozen = Volume("f.qcow2", pool=pool, size="1GiB", backing="/srv/frozen", backing_format="raw")
        kernel = Volume("vmlinuz", pool=pool, size="8MiB", format="raw")
        disks = [Disk(root, boot=1), Disk(data, bus="scsi", target="sdc"), Disk(frozen)]
        nics = [NIC(net, model="e1000", mac="52:54:00:00:00:01", ip="10.1.0.9"), NIC(bridge="br0"), NIC(net)]
        vm = VM("web", host=host, disks=disks, nics=nics, kernel=kernel, initrd=kernel, **VM_VALUES)
        names = {host: "h", pool: "pool", net: "net", base: "base", root: "root", data: "data", frozen: "frozen"}
        lines = [w.declare(r, var) for r, var in [*names.items(), (kernel, "kernel")]]
        return [*lines, w.declare(vm)]

    built, loaded = write_and_load(tmp_path, declare)
    assert [r.address for r in loaded.resources] == [r.address for r in built.resources]
    for want, got in zip(built.resources, loaded.resources, strict=True):
        assert described(got) == described(want), want.address


def test_defaults_and_short_forms_keep_programs_short(tmp_path):
    def declare(w: Writer) -> list[str]:
        host = Host("h", "test:///default")
        pool = Pool("p", path="/srv/p", host=host)
        vol = Volume("a.qcow2", pool=pool, size=512 * 1024**2, backing="/srv/base", backing_format="qcow2")
        net = Network("n", host=host, cidr="10.2.0.0/24")
        vm = VM("a", host=host, vcpus=1, memory=2 * 1024**3, max_vcpus=1, max_memory="2GiB", serial=False,
                console_log=False, disks=[vol], nics=[NIC(net)], graphics="vnc")  # fmt: skip
        return [w.declare(host, "h"), w.declare(pool, "pool"), w.declare(vol, "vol"), w.declare(net, "net"),
                w.declare(vm)]  # fmt: skip

    built, loaded = write_and_load(tmp_path, declare)
    text = (tmp_path / "generated.py").read_text()
    assert 'vol = Volume("a.qcow2", pool=pool, size="512MiB", backing="/srv/base")\n' in text, text
    assert 'VM(\n    "a",\n    host=h,\n    vcpus=1,\n    memory="2GiB",\n' in text, "vcpus and memory always shown"
    assert '    disks=[vol],\n    nics=[net],\n    graphics="vnc",\n    serial=False,\n)' in text, text
    assert "max_" not in text and "console_log" not in text and "import VM, Host, Network, Pool, Volume\n" in text
    assert loaded.vms[0].max_memory_bytes == built.vms[0].max_memory_bytes


def test_long_lists_wrap_one_item_per_line():
    host = Host("h", "test:///default")
    w = Writer()
    w.name(host, "h")
    nics = [NIC(bridge=f"bridge{i}", mac=f"52:54:00:00:00:{i:02x}") for i in range(4)]
    text = w.declare(VM("a", host=host, nics=nics))
    assert '    nics=[\n        NIC(bridge="bridge0", mac="52:54:00:00:00:00"),\n' in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_secrets_undeclared_references_and_unknown_values_are_refused():
    host = Host("h", "test:///default")
    w = Writer()
    with pytest.raises(KeyError, match="used before it is declared"):
        w.declare(Pool("p", path="/p", host=host))
    w.name(host, "h")
    with pytest.raises(ValueError, match="password is a secret"):
        w.declare(VM("a", host=host, cloud_init=CloudInit(password="s3cret")))
    with pytest.raises(ValueError, match="secret"):
        w.declare(VM("a", host=host, graphics=Graphics(password="s3cret")))
    with pytest.raises(TypeError, match="cannot write a object"):
        w.declare(VM("a", host=host, description=object()))  # type: ignore[arg-type]
    clone = w.declare(VM("a", host=host, cloud_init=CloudInit(password="s3cret")), cloud_init=Code("SOURCE.ci"))
    assert "cloud_init=SOURCE.ci" in clone and "s3cret" not in clone
