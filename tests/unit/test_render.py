"""Rendering: golden files, libvirt acceptance on test:///default, parse/render symmetry, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from builders import QEMU_FACTS, declare

from virtplan.documents.parse import owner_of, parse
from virtplan.documents.render import Renderer
from virtplan.documents.seed import build_seed_iso, read_seed_iso
from virtplan.model import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Volume, validate
from virtplan.plan.planner import desired_spec

GOLDEN = Path(__file__).parent / "golden"
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def lab_stack():
    with declare("golden") as stack:
        Host("kvm1", "test:///default", domain_type="qemu")
        net = Network("lab-net", cidr="10.20.0.0/24", domain="lab.test", dhcp_range=("10.20.0.100", "10.20.0.199"))
        Network("iso", mode="isolated", cidr="10.30.0.0/24", dhcp=False, autostart=False)
        Network("uplink", mode="bridge", bridge="br0")
        pool = Pool("lab-pool", path="/var/lib/virtplan/lab")
        base = Volume("base.qcow2", pool=pool, size="10GiB")
        root = Volume("web1.qcow2", pool=pool, backing=base)
        data = Volume("data.raw", pool=pool, size="2GiB", format="raw")
        VM(
            "web1",
            vcpus=2,
            max_vcpus=4,
            memory="512MiB",
            max_memory="1GiB",
            disks=[Disk(root, boot=1), Disk(data, bus="scsi")],
            nics=[NIC(net, ip="10.20.0.11", mac="52:54:00:aa:00:01")],
            cloud_init=CloudInit(
                user="ops", ssh_keys=["ssh-ed25519 AAAAC3 ops@lab"], packages=["nginx"], password="s3cret!"
            ),
            graphics=Graphics("vnc", password="vncpass"),
            description='web server <1> & "friends"',
            autostart=True,
        )
        kernel = Volume("vmlinuz", pool=pool, size="16MiB", format="raw")
        initrd = Volume("initrd.img", pool=pool, size="4MiB", format="raw")
        VM("direct", memory="128MiB", max_memory="192MiB", disks=[Volume("direct.qcow2", pool=pool, size="64MiB")],
           kernel=kernel, initrd=initrd, cmdline="console=ttyS0 quiet", nics=[NIC(net)])  # fmt: skip
        VM("uefi-box", memory="256MiB", firmware="uefi", machine="q35", nics=[NIC(bridge="br0", mac="52:54:00:aa:00:02")],
           graphics="spice", serial=False, state="stopped")  # fmt: skip
    validate(stack)
    return stack, Renderer(stack, {"kvm1": QEMU_FACTS}, keys={"kvm1": b"a fixed key, for golden files"})


def documents():
    stack, r = lab_stack()
    docs = {}
    for net in stack.networks:
        docs[f"network-{net.name}.xml"] = r.network_xml(net)
    docs["pool-lab-pool.xml"] = r.pool_xml(stack.pools[0])
    for vol in stack.volumes:
        docs[f"volume-{vol.name}.xml"] = r.volume_xml(vol)
    for vm in stack.vms:
        docs[f"domain-{vm.name}.xml"] = r.domain_xml(vm, reveal_secrets=False)
    for name, content in r.seed_files(stack.vms[0], reveal_secrets=False).items():
        docs[f"cloud-init-web1-{name}"] = content
    return docs


@pytest.mark.parametrize("name", sorted(documents()))
def test_golden(name, update_golden):
    rendered = documents()[name]
    path = GOLDEN / name
    if update_golden or not path.exists():
        path.write_text(rendered)
        if not update_golden:
            pytest.fail(f"golden file {name} was missing and has been written; review and commit it")
    assert rendered == path.read_text(), f"{name} differs from its golden file (VIRTPLAN_UPDATE_GOLDEN=1 to accept)"


def test_golden_documents_are_accepted_by_libvirt():
    conn = libvirt.open("test:///default")
    try:
        pool = conn.storagePoolLookupByName("default-pool")
        for name, xml in sorted(documents().items()):
            if name.startswith("domain-"):
                dom = conn.defineXML(xml)
                assert dom.name() in xml
                dom.undefineFlags(0)
            elif name.startswith("network-"):
                conn.networkDefineXML(xml).undefine()
            elif name.startswith("pool-"):
                conn.storagePoolDefineXML(xml, 0).undefine()
            elif name.startswith("volume-"):
                pool.createXML(xml, 0).delete(0)
    finally:
        conn.close()


def test_parse_of_render_is_the_model():
    """Symmetry: what the templates write, the parsers read back as the model's values."""
    stack, r = lab_stack()
    web1 = stack.vms[0]
    spec = parse("vm", r.domain_xml(web1))
    assert spec["memory"] == 512 * 1024**2 and spec["max_memory"] == 1024**3
    assert spec["vcpus"] == 2 and spec["max_vcpus"] == 4
    assert spec["machine"] == "pc-i440fx-7.2" and spec["type"] == "qemu"
    assert spec["disks"] == [
        {"volume": "lab-pool/web1.qcow2", "device": "disk", "bus": "virtio", "boot": 1},
        {"volume": "lab-pool/data.raw", "device": "disk", "bus": "scsi", "boot": None},
    ]
    assert spec["nics"] == [{"network": "lab-net", "bridge": None, "model": "virtio", "mac": "52:54:00:aa:00:01"}]
    assert spec["description"] == web1.description
    assert spec["graphics"]["type"] == "vnc" and spec["graphics"]["listen"] == "127.0.0.1"
    assert spec["console_log"] == "/var/lib/virtplan/lab/web1-console.log"
    direct = parse("vm", r.domain_xml(next(v for v in stack.vms if v.name == "direct")))
    assert (
        direct["kernel"] == "/var/lib/virtplan/lab/vmlinuz" and direct["initrd"] == "/var/lib/virtplan/lab/initrd.img"
    )
    assert direct["cmdline"] == "console=ttyS0 quiet"
    uefi = parse("vm", r.domain_xml(next(v for v in stack.vms if v.name == "uefi-box")))
    assert uefi["firmware"] == "uefi" and uefi["machine"] == "pc-q35-7.2" and uefi["serial"] is False
    assert uefi["nics"][0]["bridge"] == "br0"
    net = parse("network", r.network_xml(stack.networks[0]))
    assert net == {
        "mode": "nat", "bridge": "vp-lab-net", "domain": "lab.test", "cidr": "10.20.0.0/24",
        "gateway": "10.20.0.1", "dhcp": True, "dhcp_range": "10.20.0.100-10.20.0.199",
        "reservations": [{"mac": "52:54:00:aa:00:01", "ip": "10.20.0.11", "name": "web1"}],
    }  # fmt: skip
    iso = parse("network", r.network_xml(stack.networks[1]))
    assert iso["mode"] == "isolated" and iso["dhcp"] is False
    overlay = parse("volume", r.volume_xml(stack.volumes[1]))
    assert overlay == {"format": "qcow2", "capacity": 10 * 1024**3, "backing": "/var/lib/virtplan/lab/base.qcow2"}


def test_parse_of_libvirts_own_xml_matches_the_desired_spec():
    """libvirt adds defaults, aliases and addresses; none of them shows up as a difference."""
    stack, r = lab_stack()
    conn = libvirt.open("test:///default")
    try:
        for vm in stack.vms:
            dom = conn.defineXML(r.domain_xml(vm))
            observed = parse("vm", dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            dom.undefineFlags(0)
            wanted = desired_spec(vm, r)
            for field, value in wanted.items():
                if field not in ("state", "autostart", "unplugged"):  # runtime: a host knows them
                    assert observed[field] == value, field
    finally:
        conn.close()


def test_names_and_descriptions_cannot_inject_xml():
    with declare("inj") as stack:
        Host("h", "test:///default")
        VM("vm", memory="64MiB", description="</description><devices><disk/></devices><description>&amp; 'x' \"y\"")
    validate(stack)
    xml = Renderer(stack, {"h": QEMU_FACTS}).domain_xml(stack.vms[0])
    root = ET.fromstring(xml)  # well-formed
    assert root.findtext("description") == stack.vms[0].description
    assert root.findall("devices/disk") == []


def test_owner_mark_is_readable_back():
    stack, r = lab_stack()
    owner = owner_of(ET.fromstring(r.network_xml(stack.networks[0])))
    assert owner is not None and owner.stack == "golden" and owner.address == "kvm1/network/lab-net"


def test_secrets_are_masked_unless_revealed():
    stack, r = lab_stack()
    web1 = stack.vms[0]
    masked = r.domain_xml(web1, reveal_secrets=False) + "".join(r.seed_files(web1, reveal_secrets=False).values())
    assert "vncpass" not in masked and "s3cret!" not in masked
    assert 'passwd="vncpass"' in r.domain_xml(web1)
    assert "s3cret!" in r.seed_files(web1)["user-data"]


def test_seed_digest_tracks_content_but_not_secret_text():
    stack, r = lab_stack()
    web1 = stack.vms[0]
    before = r.seed_digest(web1)
    web1.cloud_init.packages.append("curl")
    assert r.seed_digest(web1) != before


def test_seed_iso_round_trips():
    files = {
        "meta-data": "instance-id: x\n",
        "user-data": "#cloud-config\nhostname: a\n",
        "network-config": "version: 2\n",
    }
    data = build_seed_iso(files)
    assert data[32808:32814] == b"cidata"
    assert read_seed_iso(data) == files


def test_stack_templates_override_builtins(tmp_path):
    (tmp_path / "pool.xml.j2").write_text(
        '<pool type="{{ pool.type }}"><name>{{ pool.name }}</name><target><path>{{ pool.path }}/custom</path></target></pool>'
    )
    with declare("tpl") as stack:
        Host("h", "test:///default")
        Pool("p", path="/srv")
    validate(stack)
    stack.template_dir = tmp_path
    r = Renderer(stack, {"h": QEMU_FACTS})
    assert desired_spec(stack.pools[0], r)["path"] == "/srv/custom"  # overrides take part in diffing


def test_a_file_in_a_folder_is_named_as_pathlib_names_it() -> None:
    """`in_folder` (the console log's and a dir pool volume's path) joins as pathlib does,
    for odd folders and names too."""
    import itertools

    from virtplan.documents.render import in_folder

    folders = ["/", "//", "/a", "/a/", "/a//b", "/a/./b/", "a", "", ".", "./x", "/a/..", "///", "/a/b/."]
    names = ["x", "x.qcow2", "-console.log", "a b", "é", "x/y", ".", "..", "", ".hidden", "x.", " "]
    for folder, name in itertools.product(folders, names):
        assert in_folder(folder, name) == str(Path(folder) / name), (folder, name)


def test_compiled_templates_are_kept_in_the_cache_folder_and_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from virtplan.documents.render import environment

    monkeypatch.setenv("VIRTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    own = tmp_path / "own"
    own.mkdir()
    (own / "note.txt.j2").write_text("first {{ x }}")
    environment.cache_clear()
    try:
        assert environment(own).get_template("note.txt.j2").render(x=1) == "first 1"
        assert list((tmp_path / "cache" / "templates").glob("*/__jinja2_*.cache"))  # compiled once, kept
        (own / "note.txt.j2").write_text("second {{ x }}")  # the text changed: compiled again
        environment.cache_clear()
        assert environment(own).get_template("note.txt.j2").render(x=2) == "second 2"
        environment.cache_clear()
        monkeypatch.setenv("VIRTPLAN_CACHE_DIR", "/proc/no-cache-here")  # cannot be written: no cache
        assert environment(own).get_template("note.txt.j2").render(x=3) == "second 3"
    finally:
        environment.cache_clear()
