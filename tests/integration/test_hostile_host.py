"""Hostile input and secrets against a real private host.

- Invalid stacks change nothing on a real host (every object and the records compared
  before and after), with `apply --yes` and `destroy --yes`.
- What only the host can judge (machine type, host bridges, an existing network) is refused
  at plan time, before anything is changed.
- A VNC password changed outside virtplan is reported by `drift` and put back by `apply`.
- A secret scan: every command and output format (plan text, JSON, Markdown, saved plan,
  `--commands`, render, show, drift, errors, `--debug` tracebacks), the records on the host
  (ledger and key), libvirt's and QEMU's logs and virtplan's local cache hold no secret, in
  clear or encoded (JSON, URL, base64, hex, XML); the key of the keyed digests never leaves
  the host; no output holds any unkeyed digest of a correct guess.
The suite prints its figures at the end of the run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import sys
import urllib.parse
from collections import Counter
from pathlib import Path

import libvirt
import pytest
from review_support import Cli, host_root

from tests.figures import record_figures
from virtplan.model.secrets import Secret

SECRET_STACK = """\
import os
from virtplan import NIC, VM, CloudInit, Graphics, Host, Network, Pool, Volume

Host("local", domain_type="qemu")
net = Network("sec-net", cidr="10.93.0.0/24")
pool = Pool("sec-pool", path="/var/lib/libvirt/images/sec")
VM("sec-1", memory="64MiB", disks=[Volume("sec-1.qcow2", pool=pool, size="16MiB")], nics=[NIC(net)],
   cloud_init=CloudInit(user="ops", password=os.environ["SEC_PW"]),
   graphics=Graphics("vnc", password=os.environ["SEC_VNC"]), shutdown_timeout=0,
   memory_typo_guard=None) if os.environ.get("SEC_BROKEN") else None
VM("sec-1", memory="64MiB", disks=[Volume("sec-1.qcow2", pool=pool, size="16MiB")], nics=[NIC(net)],
   cloud_init=CloudInit(user="ops", password=os.environ["SEC_PW"]),
   graphics=Graphics("vnc", password=os.environ["SEC_VNC"]), shutdown_timeout=0)
VM("sec-2", memory="64MiB", disks=[Volume("sec-2.qcow2", pool=pool, size="16MiB")],
   cloud_init=CloudInit(user_data="#cloud-config\\nwrite_files: [{path: /root/token, content: " + os.environ["SEC_TOKEN"]
                        + "}]\\n"), shutdown_timeout=0)
"""
SECRETS = {"SEC_PW": "Cl0ud-Pa55/wd+x&y", "SEC_VNC": "vN+c/9x&", "SEC_TOKEN": "tok_Zq8+/xY9=end"}
OUT_OF_BAND = "oob-Pw1&"


def forms(secret: str) -> set[str]:
    """The secret as it could appear in any output: plain, JSON-escaped, URL-encoded, XML
    escaped, hex, base64 at each alignment, and virtplan 0.1's unkeyed digests of it."""
    raw = secret.encode()
    found = {
        secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
        html.escape(secret), html.escape(secret, quote=False).replace("&", "&#38;"), raw.hex(),
        Secret(secret).digest(), Secret(secret).digest()[:16], Secret(secret).digest()[:12],
    }  # fmt: skip
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode()
        core = encoded[(4 if k else 0) : len(encoded) - 4]
        if len(core) >= 6:
            found.add(core)
    return found


def key_forms(key: bytes) -> set[str]:
    return {key.hex(), key.hex()[:16], base64.b64encode(key).decode()[:20]}


@pytest.fixture(scope="module")
def tally():
    counts: Counter[str] = Counter()
    yield counts
    record_figures("secret scan", {
        "outputs scanned": counts["outputs"], "host files scanned": counts["files"],
        "forms per secret": counts["forms"], "occurrences": counts["occurrences"],
    })  # fmt: skip
    record_figures("invalid stacks on a real host", {
        "cases": counts["invalid cases"], "clear errors": counts["invalid clear"], "host changes": counts["changes"],
    })  # fmt: skip


def snapshot(conn) -> dict[str, str]:
    """Every object on the host, with its definition and state, and every records file."""
    state = {}
    for dom in conn.listAllDomains(0):
        state[f"vm/{dom.name()}"] = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE) + str(dom.isActive())
    for net in conn.listAllNetworks(0):
        state[f"network/{net.name()}"] = net.XMLDesc(0) + str(net.isActive())
    for pool in conn.listAllStoragePools(0):
        xml = re.sub(
            r"<(capacity|allocation|available)\b[^>]*>\d*</\1>", "", pool.XMLDesc(libvirt.VIR_STORAGE_XML_INACTIVE)
        )
        state[f"pool/{pool.name()}"] = xml + str(pool.isActive())  # without its usage counters
        if pool.isActive():
            pool.refresh(0)
            for vol in pool.listAllVolumes():
                state[f"volume/{pool.name()}/{vol.name()}"] = vol.path()
    return state


def test_invalid_stacks_change_nothing_on_a_real_host(private_host, tmp_path, tally):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    import test_hostile_stacks as cases  # the catalogue of the generated suite (tests/unit)

    valid_values = {**cases.VALID, "pool_path": '"/var/lib/libvirt/images/hostile"'}

    cli = Cli(private_host.uri, tmp_path / "home", cwd=tmp_path)
    conn = private_host.connect()
    try:
        valid = tmp_path / "valid.py"
        valid.write_text(cases.STACK.format(uri=private_host.uri, **valid_values))
        cli("apply", str(valid), "--yes")  # a deployed stack, which the broken versions must leave alone
        before = snapshot(conn)
        picks = [(slot, breaks[0]) for slot, breaks in sorted(cases.BREAKS.items())]
        runs = [({**valid_values, slot: bad}, "") for slot, (bad, _a, _f) in picks]
        runs += [(valid_values, code) for code, _a, _f in cases.EXTRA]
        stack = tmp_path / "stack.py"
        for i, (values, extra) in enumerate(runs):
            stack.write_text(cases.STACK.format(uri=private_host.uri, **{**values, "extra": extra}))
            command = ("apply", "--yes") if i % 2 == 0 else ("destroy", "--yes", "--allow-destroy")
            tally["invalid cases"] += 1
            out = cli(command[0], str(stack), *command[1:], rc=1)
            assert out.startswith("error: ") and "internal error" not in out, out
            tally["invalid clear"] += 1
            after = snapshot(conn)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            tally["changes"] += len(changed)
            assert not changed, f"{changed} changed by:\n{stack.read_text()}\n{out}"
        cli("destroy", str(valid), "--yes", "--allow-destroy")
    finally:
        conn.close()


def test_what_only_the_host_can_judge_is_refused_at_plan_time(private_host, tmp_path):
    stack = tmp_path / "judge.py"
    stack.write_text("""\
from virtplan import NIC, VM, Host, Network

Host("local", domain_type="qemu")
net = Network("judge-net", cidr="10.94.0.0/24")
Network("uplink", mode="bridge", bridge="nobr1")
VM("odd-machine", memory="64MiB", machine="pc-nosuch-9.9", nics=[NIC(net)])
VM("no-bridge", memory="64MiB", nics=[NIC(bridge="nobr0")])
VM("no-network", memory="64MiB", nics=[Network("nosuchnet", existing=True)])
""")
    cli = Cli(private_host.uri, tmp_path / "home", cwd=tmp_path)
    conn = private_host.connect()
    try:
        before = snapshot(conn)
        out = cli("apply", str(stack), "--yes", rc=1)
        assert "local/network/uplink: bridge: host 'local' has no interface 'nobr1'" in out, out
        assert "local/vm/no-bridge: nics[0].bridge: host 'local' has no interface 'nobr0'" in out, out
        stack.write_text(stack.read_text().replace('Network("uplink", mode="bridge", bridge="nobr1")\n', "")
                         .replace('VM("no-bridge", memory="64MiB", nics=[NIC(bridge="nobr0")])\n', ""))  # fmt: skip
        out = cli("apply", str(stack), "--yes", rc=1)
        assert "local/vm/odd-machine: machine: host does not offer machine type 'pc-nosuch-9.9'" in out, out
        assert "local/vm/no-network: nics[0].network: network 'nosuchnet' does not exist on host 'local'" in out
        assert snapshot(conn) == before, "refused at plan time: nothing changed"
    finally:
        conn.close()


def test_secrets_reach_no_output_and_a_vnc_password_changed_outside_is_put_back(private_host, tmp_path, tally):
    stack = tmp_path / "sec.py"
    stack.write_text(SECRET_STACK)
    cli = Cli(private_host.uri, tmp_path / "home", cwd=tmp_path)
    cli.env.update(SECRETS)
    outputs: dict[str, str] = {}

    def run(name: str, *args: str, rc: int = 0) -> str:
        proc = cli.run(*args)
        outputs[name] = proc.stdout + proc.stderr
        assert proc.returncode == rc, f"{name}: exit {proc.returncode}\n{outputs[name]}"
        return outputs[name]

    run("plan", "plan", "sec.py")
    run("plan json", "plan", "sec.py", "--format", "json")
    run("plan markdown", "plan", "sec.py", "--format", "markdown", "--commands")
    run("plan commands", "plan", "sec.py", "--commands")
    run("plan commands json", "plan", "sec.py", "--commands", "--format", "json")
    run("plan out", "plan", "sec.py", "--out", "saved.json")
    outputs["saved plan"] = (tmp_path / "saved.json").read_text()
    run("render", "render", "sec.py")
    assert "(sensitive" in outputs["render"] and SECRETS["SEC_TOKEN"] not in outputs["render"]
    run("apply saved", "apply", "saved.json")
    run("show", "show", "sec.py")
    run("show json", "show", "sec.py", "--format", "json")
    run("drift", "drift", "sec.py")
    run("render after", "render", "sec.py")
    assert "No changes." in run("plan after", "plan", "sec.py")

    # the secrets did reach the host (and only there)
    conn = private_host.connect()
    try:
        dom = conn.lookupByName("sec-1")
        assert f"passwd='{html.escape(SECRETS['SEC_VNC'], quote=False)}'" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE)

        # a VNC password changed outside virtplan: drift reports it, plan restarts, apply puts it back
        xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
        xml = xml.replace(f"passwd='{html.escape(SECRETS['SEC_VNC'], quote=False)}'",
                          f"passwd='{html.escape(OUT_OF_BAND, quote=False)}'")  # fmt: skip
        conn.defineXML(xml)
        drift = run("drift oob", "drift", "sec.py", "--detailed-exitcode", rc=2)
        assert "vm sec-1" in drift and "graphics" in drift and "password" in drift, drift
        run("drift oob json", "drift", "sec.py", "--format", "json")
        plan = run("plan oob", "plan", "sec.py")
        assert "vm sec-1" in plan and "graphics" in plan, plan
        run("apply oob", "apply", "sec.py", "--yes", "--allow-destroy")
        secure = conn.lookupByName("sec-1").XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE | libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert f"passwd='{html.escape(SECRETS['SEC_VNC'], quote=False)}'" in secure, "put back"
        assert "No changes." in run("plan after oob", "plan", "sec.py")

        # errors and tracebacks
        cli.env["SEC_BROKEN"] = "1"
        run("error", "plan", "sec.py", rc=1)
        run("error debug", "plan", "sec.py", "--debug", rc=1)
        del cli.env["SEC_BROKEN"]
        run("connection debug", "apply", "sec.py", "--yes", "--debug", "--host",
            "local=qemu+unix:///system?socket=/nonexistent/sock", rc=1)  # fmt: skip
        assert "Traceback" in outputs["connection debug"] and "Traceback" in outputs["error debug"]

        # what the host keeps: the records (ledger and key) and the logs
        root = host_root(private_host)
        records = root / "var/lib/libvirt/virtplan"
        keys = [p.read_bytes() for p in records.iterdir() if p.name.split("~")[-1] == "sec.secret-key"]
        assert len(keys) == 1 and len(keys[0]) == 32, "one key for the stack, on the host"
        files = {str(p): p.read_bytes() for p in records.iterdir()}
        for folder in (private_host.workdir / "log", tmp_path / "home"):
            files.update({str(p): p.read_bytes() for p in folder.rglob("*") if p.is_file()})
        files.update({str(p): p.read_bytes() for p in private_host.workdir.glob("*.log")})
        qemu_logs = [f for f in files if "/qemu/" in f and f.endswith(".log")]
        assert qemu_logs, "QEMU's logs are scanned too"
        # the scanner finds a secret where it must be: in the seed itself
        seed = (root / "var/lib/libvirt/images/sec/sec-2-cidata.iso").read_bytes().decode("latin-1")
        assert any(form in seed for form in forms(SECRETS["SEC_TOKEN"])), "the scan would see a secret"
    finally:
        conn.close()
    run("destroy", "destroy", "sec.py", "--yes", "--allow-destroy")

    scanned = {**SECRETS, "out of band": OUT_OF_BAND}
    found = []
    tally["outputs"] = len(outputs)
    tally["files"] = len(files)
    tally["forms"] = len(forms(SECRETS["SEC_PW"]))
    for name, text in outputs.items():
        for label, secret in scanned.items():
            found += [f"{label} as {form!r} in output {name!r}" for form in forms(secret) if form in text]
        found += [f"the key as {f!r} in output {name!r}" for f in key_forms(keys[0]) if f in text]
    for path, data in files.items():
        if path.endswith(".secret-key"):
            continue
        text = data.decode("latin-1")
        for label, secret in scanned.items():
            found += [f"{label} as {form!r} in {path}" for form in forms(secret) if form in text]
        found += [f"the key as {f!r} in {path}" for f in key_forms(keys[0]) if f in text]
    tally["occurrences"] = len(found)
    assert not found, "\n".join(found)

    # a correct guess confirms nothing: every digest shown is keyed (the key is nowhere above),
    # and none is any plain hash of a secret
    shown = set(re.findall(r"\b[0-9a-f]{12,64}\b", "\n".join(outputs.values())))
    for secret in scanned.values():
        for plain in (Secret(secret).digest(), hashlib.sha256(secret.encode()).hexdigest()):
            assert not any(plain.startswith(d) for d in shown), "an unkeyed digest of a secret is shown"
