"""The native provider without a libvirt daemon: inputs round trip, check, static diff, pickling, records."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import dill
import libvirt
import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.output import Unknown
from pulumi.runtime.rpc import UNKNOWN
from wire_format import wire

from virtplan.documents.capabilities import parse_capabilities
from virtplan.documents.render import Renderer
from virtplan.errors import ConnectionFailed
from virtplan.hosts.records import StateStore
from virtplan.model import VM, Network, Pool, Stack, Volume, load_stack
from virtplan.plan.planner import desired_spec
from virtplan.pulumi.describe import describe, rebuild, size_text, with_drift
from virtplan.pulumi.provider import VirtplanProvider
from virtplan.pulumi.session import ProviderError

REPO = Path(__file__).resolve().parents[2]
FEATURES = Path(__file__).resolve().parent / "stacks" / "features.py"
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/virtplan-test/libvirt-sock"


@pytest.fixture(scope="module")
def facts() -> Any:
    conn = libvirt.open("test:///default")
    try:
        return parse_capabilities(conn.getCapabilities())
    finally:
        conn.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)


def render(stack: Stack, resource: Any, facts: Any) -> str:
    r = Renderer(stack, {h.name: facts for h in stack.hosts})
    if isinstance(resource, Network):
        return r.network_xml(resource)
    if isinstance(resource, Pool):
        return r.pool_xml(resource)
    if isinstance(resource, Volume):
        return r.volume_xml(resource)
    assert isinstance(resource, VM)
    files = r.seed_files(resource) if resource.cloud_init else {}
    return r.domain_xml(resource) + json.dumps(files, sort_keys=True)


@pytest.mark.parametrize("program", [FEATURES, REPO / "stacks" / "demo.py"], ids=["features", "demo"])
def test_inputs_rebuild_to_the_same_documents(program: Path, facts: Any) -> None:
    """Through the wire and back, every resource renders byte for byte as the CLI renders it
    (network reservations included, from the stand-ins for the VMs that hold them)."""
    stack = load_stack(program)
    for resource in stack.managed():
        rebuilt = rebuild(resource.kind, wire(describe(resource, stack)))
        assert rebuilt.address == resource.address
        assert render(rebuilt.context, rebuilt.target, facts) == render(stack, resource, facts), resource.address
        renderer = Renderer(rebuilt.context, {rebuilt.host.name: facts})
        original = Renderer(stack, {h.name: facts for h in stack.hosts})
        assert desired_spec(rebuilt.target, renderer) == desired_spec(resource, original)
        assert [r.address for r in rebuilt.plan.managed()][-1] == resource.address


def test_network_reservations_come_from_the_inputs(facts: Any) -> None:
    stack = load_stack(FEATURES)
    net = next(n for n in stack.networks if n.host is not None and n.host.name == "a")
    inputs = wire(describe(net, stack))
    inputs["reservations"] = []
    rebuilt = rebuild("network", inputs)
    assert "<host " not in render(rebuilt.context, rebuilt.target, facts)
    assert "<host mac=" in render(stack, net, facts)


def provider(kind: str, tmp_path: Path) -> VirtplanProvider:
    return VirtplanProvider(kind, str(tmp_path / "state.json"))


def vm_inputs(**changes: Any) -> dict[str, Any]:
    stack = load_stack(FEATURES)
    web = next(v for v in stack.vms if v.name == "web")
    return {**wire(describe(web, stack)), **changes}


def test_check_accepts_a_valid_description(tmp_path: Path) -> None:
    news = vm_inputs()
    result = provider("vm", tmp_path).check({}, news)
    assert result.failures == []
    assert result.inputs is news


@pytest.mark.parametrize(
    ("changes", "prop", "text"),
    [
        ({"memory": "lots"}, "memory", "cannot read size 'lots'"),
        ({"maxMemory": "64MiB"}, "maxMemory", "is less than memory=128MiB"),
        ({"vcpus": 0.0}, "vcpus", "at least 1"),
        ({"state": "paused"}, "state", "'paused' is not one of running, stopped"),
    ],
)
def test_check_reports_failures_per_input_property(
    tmp_path: Path, changes: dict[str, Any], prop: str, text: str
) -> None:
    result = provider("vm", tmp_path).check({}, vm_inputs(**changes))
    assert [(f.property, f.reason) for f in result.failures if f.property == prop], result.failures
    assert any(text in f.reason for f in result.failures), [f.reason for f in result.failures]


def test_check_reports_nested_and_host_properties(tmp_path: Path) -> None:
    inputs = vm_inputs()
    inputs["nics"][0]["ip"] = "10.99.0.5"
    inputs["host"]["uri"] = "not-a-uri"
    props = {f.property for f in provider("vm", tmp_path).check({}, inputs).failures}
    assert props == {"nics[0].ip", "host.uri"}


def test_check_tolerates_unknown_values(tmp_path: Path) -> None:
    news = vm_inputs(memory=UNKNOWN, vcpus=0.0)  # would fail if it were checked
    result = provider("vm", tmp_path).check({}, news)
    assert result.failures == [] and result.inputs is news


def test_check_tolerates_unknown_objects_nested_in_inputs(tmp_path: Path) -> None:
    # What the SDK really hands a provider during `pulumi preview` (keep_unknowns): an Unknown
    # object, here where a text() value from another resource is not known yet.
    inputs = vm_inputs()
    news = {**inputs, "cloudInit": {"hostname": "web", "sshKeys": [Unknown()]}, "vcpus": 0.0}
    result = provider("vm", tmp_path).check({}, news)
    assert result.failures == [] and result.inputs is news


def test_check_reports_inputs_that_describe_nothing(tmp_path: Path) -> None:
    inputs = vm_inputs()
    del inputs["host"]
    failures = provider("vm", tmp_path).check({}, inputs).failures
    assert [f.property for f in failures] == [""]
    assert "missing 'host'" in failures[0].reason


@pytest.mark.parametrize(
    ("kind", "change", "replaces"),
    [
        ("vm", lambda d: d.update(name="web2"), ["name"]),
        ("vm", lambda d: d["host"].update(name="b"), ["host"]),
        ("vm", lambda d: d.update(stack="other"), ["stack"]),
        ("volume", lambda d: d["pool"].update(name="other-pool"), ["pool"]),
    ],
)
def test_diff_replaces_when_the_object_is_another_one(
    tmp_path: Path, kind: str, change: Any, replaces: list[str]
) -> None:
    """A new name (or host, stack, pool) is a different libvirt object: no host is contacted."""
    stack = load_stack(FEATURES)
    resource = next(r for r in stack.managed() if r.kind == kind and r.host.name == "a")  # type: ignore[union-attr]
    olds = wire(describe(resource, stack))
    news = json.loads(json.dumps(olds))
    change(news)
    result = provider(kind, tmp_path).diff(resource.address, {**olds, "observed": {}}, news)
    assert (result.changes, result.replaces, result.delete_before_replace) == (True, replaces, True)


def test_diff_with_unknowns_uses_the_field_policies(tmp_path: Path) -> None:
    olds = vm_inputs()
    result = provider("vm", tmp_path).diff("a/vm/web", olds, vm_inputs(arch="aarch64", memory=UNKNOWN))
    assert (result.changes, result.replaces, result.delete_before_replace) == (True, ["arch"], True)
    live = provider("vm", tmp_path).diff("a/vm/web", olds, vm_inputs(memory=UNKNOWN))
    assert (live.changes, live.replaces) == (True, [])


def test_read_without_a_description_explains_import(tmp_path: Path) -> None:
    with pytest.raises(ProviderError, match=r"pulumi import.*pulumi/pulumi#16175"):
        provider("vm", tmp_path).read("a/vm/web", {})


def test_unreachable_host_is_an_error_never_a_deletion(tmp_path: Path) -> None:
    inputs = vm_inputs()
    inputs["host"]["uri"] = UNREACHABLE
    p = provider("vm", tmp_path)
    with pytest.raises(ConnectionFailed, match="cannot connect to host 'a'"):
        p.read("a/vm/web", inputs)
    with pytest.raises(ConnectionFailed):
        p.delete("a/vm/web", inputs)
    with pytest.raises(ConnectionFailed):
        p.diff("a/vm/web", inputs, {**inputs, "memory": "256MiB"})


def test_provider_pickles_by_reference_and_holds_only_strings(tmp_path: Path) -> None:
    p = VirtplanProvider("volume", "/srv/templates", "dev")
    blob = base64.b64decode(serialize_provider(p))
    assert b"virtplan.pulumi.provider" in blob and len(blob) < 2000  # the class by name, not its code
    copy = dill.loads(blob)
    assert type(copy) is VirtplanProvider
    assert vars(copy) == {"kind": "volume", "template_dir": "/srv/templates", "pulumi_stack": "dev"}
    assert copy.check({}, {}).failures[0].property == ""  # the copy works


def test_importing_the_package_has_no_side_effects() -> None:
    code = (
        "import sys, virtplan.pulumi; assert 'pulumi' not in sys.modules, 'pulumi imported'\n"
        "import virtplan.pulumi.provider; assert 'libvirt' not in sys.modules, 'libvirt imported'\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr


def test_shared_records_survive_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "records" / "s.json"

    def write(n: int) -> None:
        store = StateStore(path, "s")  # one instance per call, as providers do
        for i in range(20):
            store.put("test:///default", f"h/volume/p/v{n}-{i}", kind="volume", id=f"/p/v{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = StateStore(path, "s").records("test:///default")  # the CLI's reader sees them all
    assert len(records) == 160
    reader = StateStore(path, "s")
    StateStore(path, "s").forget("test:///default", "h/volume/p/v0-0")
    assert reader.get("test:///default", "h/volume/p/v0-0") is None  # no stale copy
    assert reader.get("test:///default", "h/volume/p/v0-1") == {"kind": "volume", "id": "/p/v0-1"}


def test_drift_maps_back_onto_inputs() -> None:
    assert size_text(256 * 1024**2) == "256MiB" and size_text(3 * 1024**3) == "3GiB" and size_text(1000) == 1000
    inputs = {"memory": "128MiB", "vcpus": 1.0, "nics": [{"model": "virtio"}]}
    drift = {"memory": 268435456, "vcpus": 2, "nics": [], "state": "stopped"}
    assert with_drift("vm", inputs, drift) == {"memory": "256MiB", "vcpus": 2, "nics": [{"model": "virtio"}],
                                               "state": "stopped"}  # fmt: skip
    assert with_drift("network", {}, {"dhcp_range": "10.0.0.5-10.0.0.9"}) == {"dhcpRange": ["10.0.0.5", "10.0.0.9"]}
    assert with_drift("volume", {"size": "1GiB"}, {"capacity": 2 * 1024**3}) == {"size": "2GiB"}


def test_template_overrides_travel_with_the_provider(tmp_path: Path, facts: Any) -> None:
    override = tmp_path / "tpl"
    override.mkdir()
    builtin = (REPO / "templates" / "network.xml.j2").read_text()
    (override / "network.xml.j2").write_text(builtin.replace("<network>", "<network><!-- site override -->", 1))
    program = tmp_path / "site.py"
    program.write_text(
        "from virtplan import Host, Network, use_templates\n"
        "use_templates('tpl')\n"
        "Host('h', uri='test:///default')\n"
        "Network('n', cidr='10.5.0.0/24')\n"
    )
    stack = load_stack(program)
    net = stack.networks[0]
    rebuilt = rebuild("network", wire(describe(net, stack)), str(stack.template_dir))
    xml = render(rebuilt.context, rebuilt.target, facts)
    assert "site override" in xml and xml == render(stack, net, facts)
    assert "site override" not in render(rebuild("network", wire(describe(net, stack))).context, net, facts)


def test_a_url_source_travels_with_its_checksum(tmp_path: Path) -> None:
    """A volume whose image comes from a URL keeps the URL (not made a local path) and its
    checksum through the provider's inputs."""
    program = tmp_path / "url.py"
    program.write_text(
        'from virtplan import Pool, Volume\npool = Pool("p", path="/var/lib/libvirt/images/p")\n'
        f'Volume("d.qcow2", pool=pool, source="https://images.example/d.qcow2", sha512="{"ab" * 64}")\n'
    )
    stack = load_stack(program)
    vol = stack.volumes[0]
    inputs = wire(describe(vol, stack))
    assert inputs["source"] == "https://images.example/d.qcow2" and inputs["sha512"] == "ab" * 64
    rebuilt = rebuild("volume", inputs).target
    assert (rebuilt.source, rebuilt.checksum) == ("https://images.example/d.qcow2", ("sha512", "ab" * 64))
