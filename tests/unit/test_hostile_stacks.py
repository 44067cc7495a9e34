"""Generated invalid stacks (Hypothesis): every one is exit 1 with a clear error that names the
resource and field, never an internal error or a traceback, and no host is contacted.

A valid stack program is the starting point; each case breaks 1 to 3 of its fields (or adds a
statement that breaks it as a whole) with what a careless or hostile author writes: wrong
Python types, strings where objects belong, unknown references, overlapping subnets,
duplicate MACs and IPs, addresses outside their network, bad units, zero, negative, huge and
NaN numbers, wrong booleans, cycles, cross-host references, multicast MACs, `Disk(boot=0)`,
hostile names, misspelled keywords, `sys.exit(0)`. The stack's host is a socket that counts
connections: the CLI (`plan`, `apply --yes`, `destroy --yes`, ...) must reach it 0 times.
The suite prints its figures at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from hostile_support import CountingHost, error_lines, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.figures import record_figures

STACK = """\
import sys
from virtplan import NIC, VM, CloudInit, Disk, Graphics, Host, Network, Pool, Snapshot, Volume

host = Host("local", uri={uri!r}, domain_type={domain_type}, workers={workers})
net = Network({net_name}, host=host, cidr={cidr}, gateway={gateway}, dhcp={dhcp}, dhcp_range={dhcp_range}, domain={domain},
              autostart={net_autostart}, mode={mode})
side = Network("side", cidr="10.2.0.0/24")
pool = Pool({pool_name}, path={pool_path}, autostart={pool_autostart})
base = Volume("base.qcow2", pool=pool, size={base_size}, format={base_format})
disk = Volume("web.qcow2", pool={vol_pool}, backing={backing}, size={disk_size})
web = VM({vm_name}, host={vm_host}, vcpus={vcpus}, memory={memory}, max_memory={max_memory}, machine={machine},
         arch={arch}, firmware={firmware}, disks={disks}, nics={nics}, cloud_init={cloud_init},
         graphics={graphics}, autostart={vm_autostart}, state={state}, description={description},
         shutdown_timeout={timeout}, serial={serial})
other = VM("other", memory="64MiB", nics=[NIC(side, mac={mac2}, ip={ip2})])
Snapshot("snap", vm={snap_vm}, memory={snap_memory})
{extra}
"""

VALID = {
    "domain_type": '"qemu"', "workers": "2", "net_name": '"net"', "cidr": '"10.1.0.0/24"', "gateway": "None",
    "dhcp": "True", "dhcp_range": "None", "domain": '"lab.test"', "net_autostart": "True", "mode": '"nat"',
    "pool_name": '"pool"', "pool_path": '"/var/lib/virtplan/pool"', "pool_autostart": "True",
    "base_size": '"1GiB"', "base_format": '"qcow2"', "vol_pool": "pool", "backing": "base", "disk_size": '"2GiB"',
    "vm_name": '"web"', "vm_host": "host", "vcpus": "2", "memory": '"256MiB"', "max_memory": '"512MiB"',
    "machine": "None", "arch": "None", "firmware": '"bios"', "disks": "[Disk(disk, boot=1)]",
    "nics": '[NIC(net, ip="10.1.0.10")]', "cloud_init": 'CloudInit(user="ops", ssh_keys=["ssh-ed25519 AAAA ops"])',
    "graphics": 'Graphics("vnc", listen="127.0.0.1", password="pw")', "vm_autostart": "False",
    "state": '"running"', "description": '"web server"', "timeout": "30", "serial": "True",
    "mac2": "None", "ip2": "None", "snap_vm": "web", "snap_memory": "False", "extra": "",
}  # fmt: skip

W, N, P, B, D, OTHER, S = "local/vm/web", "local/network/net", "local/pool/pool", "local/volume/pool/base.qcow2", \
    "local/volume/pool/web.qcow2", "local/vm/other", "local/snapshot/web/snap"  # fmt: skip

#: slot -> [(bad expression, expected address, expected field)]
BREAKS: dict[str, list[tuple[str, str, str]]] = {
    "domain_type": [('"xen"', "local", "domain_type"), ("3", "local", "domain_type")],
    "workers": [("0", "local", "workers"), ("True", "local", "workers"), ('"4"', "local", "workers"),
                ("10**9", "local", "workers")],
    "net_name": [('"n;rm -rf /"', "local/network/n;rm -rf /", "name"), ('"n$(id)"', "local/network/n$(id)", "name"),
                 ('"a`b`"', "local/network/a`b`", "name"), ('"n\\nx"', "local/network/n\\nx", "name"),
                 ("7", "local/network/7", "name"), ('""', "local/network/", "name")],
    "cidr": [('"10.1.0.1/24"', N, "cidr"), ('"300.1.0.0/24"', N, "cidr"), ("24", N, "cidr"),
             ('"10.1.0.0/30"', N, "cidr"), ('["10.1.0.0/24"]', N, "cidr")],
    "gateway": [('"10.9.0.1"', N, "gateway"), ('"gateway"', N, "gateway"), ("1", N, "gateway"),
                ('"10.1.0.0"', N, "gateway")],
    "dhcp": [('"maybe"', N, "dhcp"), ("1", N, "dhcp")],
    "dhcp_range": [('("10.1.0.200",)', N, "dhcp_range"), ('("10.1.0.250", "10.1.0.200")', N, "dhcp_range"),
                   ('"10.1.0.100-10.1.0.200"', N, "dhcp_range"), ('("10.9.0.2", "10.9.0.9")', N, "dhcp_range")],
    "domain": [('"a" * 300', N, "domain"), ('"bad domain"', N, "domain"), ('"<x>"', N, "domain"), ("5", N, "domain")],
    "net_autostart": [('"maybe"', N, "autostart"), ("None", N, "autostart")],
    "mode": [('"nta"', N, "mode"), ("None", N, "mode"), ('"bridge"', N, "bridge")],
    "pool_name": [('"p/q"', "local/pool/p/q", "name"), ('"-p"', "local/pool/-p", "name"),
                  ('"p" * 65', f"local/pool/{'p' * 65}", "name")],
    "pool_path": [('"relative"', P, "path"), ("None", P, "path"), ('"/tmp/x\\x1b[31m"', P, "path"), ("42", P, "path")],
    "pool_autostart": [('"yes"', P, "autostart")],
    "base_size": [("20", B, "size"), ('"20"', B, "size"), ('"2 potatoes"', B, "size"), ("-5", B, "size"),
                  ("0", B, "size"), ('float("nan")', B, "size"), ('"1e9GiB"', B, "size"), ("10**30", B, "size"),
                  ("True", B, "size"), ('"5PiB"', B, "size"), ("[1]", B, "size")],
    "base_format": [('"vmdk"', B, "format"), ("None", B, "format")],
    "vol_pool": [('"pool"', "?/volume/?/web.qcow2", "pool"), ("None", "?/volume/?/web.qcow2", "pool"),
                 ("net", "?/volume/?/web.qcow2", "pool")],
    "backing": [('"relative.qcow2"', D, "backing"), ("42", D, "backing"), ("net", D, "backing")],
    "disk_size": [('"512MiB"', D, "size"), ("7", D, "size")],
    "vm_name": [('"web;reboot"', "local/vm/web;reboot", "name"), ('"web|x"', "local/vm/web|x", "name"),
                ('"web\\x00"', "local/vm/web\\x00", "name"), ('"web\\x1b[2J"', "local/vm/web\\x1b[2J", "name"),
                ("None", "local/vm/None", "name"), ('"web space"', "local/vm/web space", "name")],
    "vm_host": [('"nonexistent"', "?/vm/web", "host"), ('Host("ghost", "test:///default")', "ghost/vm/web", "nics[0].network")],
    "vcpus": [("0", W, "vcpus"), ("-1", W, "vcpus"), ('"2"', W, "vcpus"), ("2.5", W, "vcpus"), ("True", W, "vcpus"),
              ("10**6", W, "vcpus"), ('float("nan")', W, "vcpus")],
    "memory": [("0", W, "memory"), ("512", W, "memory"), ('"lots"', W, "memory"), ('"-1GiB"', W, "memory"),
               ('float("inf")', W, "memory"), ('"9999TiB"', W, "memory"), ("None", W, "memory")],
    "max_memory": [('"128MiB"', W, "max_memory"), ('"x"', W, "max_memory")],
    "machine": [('"<q35>"', W, "machine"), ('"q35 && reboot"', W, "machine"), ("35", W, "machine"),
                ('"a" * 100', W, "machine")],
    "arch": [('"x86 64"', W, "arch"), ("64", W, "arch")],
    "firmware": [('"coreboot"', W, "firmware"), ("True", W, "firmware")],
    "disks": [("disk", W, "disks"), ('["x.raw"]', W, "disks[0]"), ("[Disk(disk, boot=0)]", W, "disks[0].boot"),
              ('[Disk(disk, boot="1")]', W, "disks[0].boot"), ('[Disk(disk, bus="usb")]', W, "disks[0].bus"),
              ('[Disk("x.raw")]', W, "disks[0]"), ("[Disk(disk, bootorder=1)]", W, "disks[0].bootorder"),
              ("[disk, disk]", W, "disks[1]"), ('"web.qcow2"', W, "disks"), ("[Disk(disk, boot=2), Disk(base, boot=2)]", W, "disks[1].boot")],
    "nics": [('["default"]', W, "nics[0]"), ('NIC("net")', W, "nics"), ('[NIC("net")]', W, "nics[0].network"),
             ('[NIC(net, ip="10.9.0.5")]', W, "nics[0].ip"), ('[NIC(net, ip="10.1.0.1")]', W, "nics[0].ip"),
             ('[NIC(net, mac="01:00:5e:00:00:01")]', W, "nics[0].mac"), ('[NIC(net, mac="zz")]', W, "nics[0].mac"),
             ('[NIC(net, mac="ff:ff:ff:ff:ff:ff")]', W, "nics[0].mac"), ('[NIC(net, ip="10.1.0.256")]', W, "nics[0].ip"),
             ('[NIC(net, bridge="br0")]', W, "nics[0]"), ('[NIC(bridge="br0;ls")]', W, "nics[0].bridge"),
             ('[NIC(net, model="ne2k")]', W, "nics[0].model"), ("[NIC(net, ipp=1)]", W, "nics[0].ipp"),
             ('[NIC(net, ip=10)]', W, "nics[0].ip"), ("[NIC(Network('default', existing=True), ip='10.0.0.5')]", W, "nics[0].ip")],
    "cloud_init": [('"user: ops"', W, "cloud_init"), ('CloudInit(ssh_keys="ssh-ed25519 AAAA")', W, "cloud_init.ssh_keys"),
                   ('CloudInit(packages="htop")', W, "cloud_init.packages"), ('CloudInit(user="Ops Admin")', W, "cloud_init.user"),
                   ('CloudInit(hostname="host_name!")', W, "cloud_init.hostname"), ("CloudInit(password=5)", W, "cloud_init.password"),
                   ('CloudInit(user_data="#cloud-config\\x00")', W, "cloud_init.user_data"),
                   ('CloudInit(user_data="#cloud-config", user="ops")', W, "cloud_init.user"),
                   ('CloudInit(usr="ops")', W, "cloud_init.usr"), ('CloudInit(packages=["$(reboot)"])', W, "cloud_init.packages[0]"),
                   ('CloudInit(instance_id="a\\nb")', W, "cloud_init.instance_id"), ("CloudInit(sensitive='no')", W, "cloud_init.sensitive")],
    "graphics": [('Graphics("vnc", listen="localhost")', W, "graphics.listen"), ('Graphics("vnc", listen="\'><x")', W, "graphics.listen"),
                 ('Graphics("rdp")', W, "graphics.type"), ('Graphics("vnc", password="123456789")', W, "graphics.password"),
                 ('Graphics("vnc", password="p\\x1bw")', W, "graphics.password"), ("5", W, "graphics"),
                 ('Graphics("vnc", passwd="x")', W, "graphics.passwd")],
    "vm_autostart": [('"maybe"', W, "autostart"), ("0", W, "autostart")],
    "state": [('"paused"', W, "state"), ("True", W, "state")],
    "description": [('"a\\x00b"', W, "description"), ('"\\x1b]0;pwned\\x07"', W, "description"), ("42", W, "description"),
                    ('"x\\x7f"', W, "description")],
    "timeout": [("-1", W, "shutdown_timeout"), ('float("nan")', W, "shutdown_timeout"), ('"30"', W, "shutdown_timeout"),
                ('float("inf")', W, "shutdown_timeout"), ("True", W, "shutdown_timeout"), ("10**9", W, "shutdown_timeout")],
    "serial": [('"yes"', W, "serial")],
    "mac2": [('"01:00:5e:00:00:fb"', OTHER, "nics[0].mac"), ("True", OTHER, "nics[0].mac")],
    "ip2": [('"10.2.0.300"', OTHER, "nics[0].ip"), ('"10.1.0.10"', OTHER, "nics[0].ip")],
    "snap_vm": [('"web"', "?/snapshot/?/snap", "vm"), ("disk", "?/snapshot/?/snap", "vm")],
    "snap_memory": [('"yes"', S, "memory")],
}  # fmt: skip

#: Statements added at the end: (code, expected address, expected field); None for a load error.
EXTRA: list[tuple[str, str | None, str]] = [
    ('Network("over", cidr="10.1.0.0/16")', "local/network/over", "cidr"),
    ('VM("dup", memory="64MiB", nics=[NIC(side, ip="10.2.0.10"), NIC(side, ip="10.2.0.10")])', "local/vm/dup", "nics[1].ip"),
    ('VM("dupmac", memory="64MiB", nics=[NIC(side, mac="52:54:00:aa:aa:aa"), NIC(side, mac="52:54:00:AA:AA:AA")])',
     "local/vm/dupmac", "nics[1].mac"),
    ('a = Volume("a", pool=pool, size="1GiB"); b = Volume("b", pool=pool, size="1GiB", backing=a); a.backing = b',
     "local/volume/pool/a", "dependencies"),
    ('h2 = Host("h2", "test:///default"); VM("x2", host=h2, memory="64MiB", nics=[NIC(net)])', "h2/vm/x2", "nics[0].network"),
    ('Pool("pool", path="/elsewhere")', P, "name"),
    ('VM("typo", memroy="1GiB")', "local/vm/typo", "memroy"),
    ('VM("pos", "1GiB")', "local/vm/pos", "arguments"),
    ('Volume("nopool")', "?/volume/?/nopool", "pool"),
    ('Pool("nopath")', "local/pool/nopath", "path"),
    ('Snapshot("lonely")', "?/snapshot/?/lonely", "vm"),
    ('Network("default", existing=True, cidr="10.9.0.0/24")', "local/network/default", "cidr"),
    ('VM("raw", memory="64MiB", disks=[Volume("r.qcow2", pool=pool, size="1GiB")], '
     'cloud_init=CloudInit(user_data="#cloud-config", ssh_keys=["k"]))', "local/vm/raw", "cloud_init.ssh_keys"),
    ("sys.exit(0)", None, "sys.exit(0)"),
    ("raise SystemExit", None, "sys.exit(None)"),
    ('VM("n", memory=memry)', None, "NameError"),
]  # fmt: skip

SLOTS = sorted(BREAKS)
COMMANDS = (("plan",), ("apply", "--yes"), ("destroy", "--yes"), ("drift",), ("show",), ("render",),
            ("plan", "--commands"), ("plan", "--format", "json"))  # fmt: skip


@st.composite
def broken_stacks(draw: st.DrawFn) -> tuple[dict[str, str], list[tuple[str | None, str]], str]:
    """(slot values, expected (address, field) errors, extra statement)."""
    slots = draw(st.lists(st.sampled_from(SLOTS), min_size=0, max_size=3, unique=True))
    values = dict(VALID)
    expected: list[tuple[str | None, str]] = []
    for slot in slots:
        bad, address, field = draw(st.sampled_from(BREAKS[slot]))
        values[slot] = bad
        expected.append((address, field))
    extra = ""
    if not slots or draw(st.booleans()):
        code, address, field = draw(st.sampled_from(EXTRA))
        extra = code
        expected.append((address, field))
    return values, expected, extra


@pytest.fixture(scope="module")
def counting_host(tmp_path_factory: pytest.TempPathFactory):
    host = CountingHost(tmp_path_factory.mktemp("sock"))
    yield host
    host.close()


@pytest.fixture(scope="module")
def tally():
    counts: Counter[str] = Counter()
    yield counts
    record_figures("invalid stacks (generated)", {
        "cases": counts["cases"], "CLI runs": counts["runs"], "clear errors": counts["clear"],
        "internal errors": counts["internal"], "tracebacks": counts["tracebacks"],
        "libvirt connections": counts["connections"], "host changes": counts["connections"],
    })  # fmt: skip


def _kind(address: str) -> str:
    parts = address.split("/")
    return parts[1] if len(parts) > 1 else "host"


def check_case(tmp: Path, host: CountingHost, values: dict[str, str], expected: list[tuple[str | None, str]],
               extra: str, command: tuple[str, ...], counts: Counter[str], exact: bool = True) -> None:  # fmt: skip
    """Run one broken stack through the CLI; with several breaks (`exact` False) an expected
    error may name its resource differently (another break renamed it or took its host)."""
    stack = tmp / "stack.py"
    stack.write_text(STACK.format(uri=host.uri, **{**values, "extra": extra}))
    before = host.count
    code, out, err = run_cli(*command[:1], str(stack), *command[1:])
    counts["runs"] += 1
    connected = host.count - before
    counts["connections"] += connected
    counts["internal"] += "internal error" in err
    counts["tracebacks"] += "Traceback" in out + err
    text = stack.read_text()
    assert code == 1, f"exit {code} for:\n{text}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert connected == 0, f"{connected} connection(s) to the host before validation passed:\n{text}"
    assert "internal error" not in err and "Traceback" not in out + err, err
    assert err.startswith("error: "), err
    assert "\x1b" not in err and "\x00" not in err, "control characters must be escaped"
    lines = error_lines(err)
    if "stack is invalid" in err.splitlines()[0]:
        bullets = [line for line in err.splitlines()[1:] if line.startswith("  - ")]
        assert len(lines) == len(bullets), f"an error without resource and field:\n{err}"
        found = {(m["address"], m["field"]) for m in lines}
        loose = {(_kind(m["address"]), m["field"]) for m in lines}
        for address, field in expected:
            if address is not None:
                # several breaks: one may hide another on the same resource (a bad cidr hides its
                # gateway), so some error on a resource of that kind is enough
                kinds = {k for k, _ in loose}
                ok = (address, field) in found if exact else (_kind(address), field) in loose or _kind(address) in kinds
                assert ok, f"expected {address}: {field}: ... in\n{err}\nfor\n{text}"
    else:  # the program itself failed: say where and what
        assert any(address is None and field in err for address, field in expected), f"{err}\nfor\n{text}"
        assert "stack.py:" in err, err
    counts["clear"] += 1


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(case=broken_stacks(), command=st.sampled_from(COMMANDS))
def test_every_invalid_stack_is_a_clear_error_before_any_connection(tmp_path, counting_host, tally, case, command):
    values, expected, extra = case
    tally["cases"] += 1
    check_case(tmp_path, counting_host, values, expected, extra, command, tally, exact=len(expected) == 1)


def test_every_break_alone_on_every_command(tmp_path, counting_host, tally):
    """Each break of the catalogue on its own (so none is only ever hidden behind another)."""
    for slot in SLOTS:
        for bad, address, field in BREAKS[slot]:
            tally["cases"] += 1
            check_case(tmp_path, counting_host, {**VALID, slot: bad}, [(address, field)], "", ("plan",), tally)
    for code, address, field in EXTRA:
        tally["cases"] += 1
        check_case(tmp_path, counting_host, VALID, [(address, field)], code, ("apply", "--yes"), tally)


def test_the_valid_stack_does_reach_the_host(tmp_path, counting_host):
    """The counter works: the unbroken stack passes validation and tries to connect."""
    stack = tmp_path / "stack.py"
    stack.write_text(STACK.format(uri=counting_host.uri, **VALID))
    before = counting_host.count
    code, _out, err = run_cli("plan", str(stack), env={"VIRTPLAN_CONNECT_TIMEOUT": "5"})
    assert code == 1 and "cannot connect to host 'local'" in err, err
    assert counting_host.count > before
