"""Hostile strings in every string field: each one is either refused by validation with a clear
error (control characters escaped, never echoed raw) or carried inertly everywhere it goes.

For every (field, string) pair the stack goes through `plan --commands` on libvirt's test
driver; an accepted string's script must pass `bash -n` and, run in a sandbox where `virsh`
and `genisoimage` only log their arguments, must run no injected command (a canary file that
every hostile string tries to create), and must write the documents verbatim (the value
parsed back out of the XML the script wrote). Accepted free text is also applied and planned
again: the plan is empty (CRLF is normalised, as libvirt does). The suite prints its figures
(cases, refused, accepted, injections, ...) at the end of the run.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest
from hostile_support import error_lines, run_cli

from tests.figures import record_figures
from virtplan.engine import Engine
from virtplan.model import load_stack

CANARY = "CANARY"
#: What an attacker or a careless author puts into strings ({c}: the canary's path).
HOSTILE = [
    "$(touch {c})", "`touch {c}`", "; touch {c}", "a\ntouch {c}\n", "'; touch {c}; '", '"; touch {c}; "',
    "EOF\ntouch {c}\nEOF", "EOF_0123456789abcdef\ntouch {c}", "x\r\ntouch {c}", "x\rtouch {c}", "\\'$(touch {c})",
    "$HOME ${{IFS}} $$ !! {{a,b}} * ~root #x", "<x a='1'>&amp;</x>]]><!--", "%s%n%x", "ü ∂ 中文 \u202etxt",
    "a\x00b$(touch {c})", "a\x1b[31mred\x1b]0;title\x07", "\x08\x0c", "tab\there", "--help", "-rf /", " lead",
    "trail ", "\\", "x" * 3000 + "$(touch {c})", "\u2028$(touch {c})", "\x85next", "multi\nline\ntext",
]  # fmt: skip

BASE = """\
from virtplan import NIC, VM, CloudInit, Disk, Host, Network, Pool, Snapshot, Volume, name_stack

name_stack("hs{n}")
Host("local", uri="test:///default", domain_type="qemu")
net = Network("hs-net", cidr="10.66.0.0/24")
pool = Pool("hs-pool", path={pool_path})
kernel = Volume("vmlinuz", pool=pool, size="16MiB", format="raw")
disk = Volume("hs.qcow2", pool=pool, size="64MiB", {volume_extra})
vm = VM("hs", memory="64MiB", disks=[disk], nics=[NIC(net)], kernel=kernel, cmdline={cmdline},
        description={description}, cloud_init=CLOUD_INIT)
Snapshot("before", vm=vm, memory=True, description={snap_description})
"""
CLOUD_INIT = """CloudInit(hostname="hs", instance_id={instance_id}, ssh_keys=[{ssh_key}], user_data={user_data},
                  meta_data={meta_data}, sensitive={sensitive})"""
DEFAULTS = {
    "pool_path": '"/var/lib/hs"', "volume_extra": "", "cmdline": '"console=ttyS0"', "description": '"web"',
    "instance_id": '"iid-hs"', "ssh_key": '"ssh-ed25519 AAAA ops"', "user_data": "None", "meta_data": "None",
    "sensitive": "False", "snap_description": '""',
}  # fmt: skip
#: field -> how a hostile string goes into the stack (s: its Python literal)
FIELDS = {
    "description": lambda s: {"description": s},
    "cmdline": lambda s: {"cmdline": s},
    "pool_path": lambda s: {"pool_path": f'"/srv/" + {s}'},
    "backing_path": lambda s: {"volume_extra": f'backing="/srv/img/" + {s}, backing_format="raw"'},
    "copy_of": lambda s: {"volume_extra": f'copy_of="/srv/img/" + {s}'},
    "instance_id": lambda s: {"instance_id": s},
    "ssh_keys": lambda s: {"ssh_key": s},
    "user_data": lambda s: {"user_data": f'"#cloud-config\\n" + {s}', "ssh_key": '"k"'},
    "user_data_secret": lambda s: {"user_data": f'"#cloud-config\\n" + {s}', "sensitive": "True", "ssh_key": '"k"'},
    "meta_data": lambda s: {"meta_data": s},
    "snapshot_description": lambda s: {"snap_description": s},
}  # fmt: skip
#: Applied and planned again on the test driver (which cannot upload seeds: without cloud-init).
APPLIED = {"description", "cmdline", "snapshot_description"}

STUB = """#!/bin/sh
# logs its arguments; pretends to succeed
printf '%s\\n' "$(basename "$0")" "$@" >> "{log}"
if [ "$(basename "$0")" = genisoimage ]; then
  while [ $# -gt 0 ]; do [ "$1" = -output ] && : > "$2"; shift; done
fi
exit 0
"""


@pytest.fixture(scope="module")
def tally():
    counts: Counter[str] = Counter()
    yield counts
    record_figures("hostile strings", {
        "cases": counts["cases"], "refused with a clear error": counts["refused"], "accepted": counts["accepted"],
        "bash -n failures": counts["syntax"], "injections": counts["injections"],
        "documents not verbatim": counts["mangled"], "apply then plan not clean": counts["unclean"],
        "internal errors": counts["internal"], "raw control characters echoed": counts["raw"],
    })  # fmt: skip


def sandbox_run(script: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    stubs = workdir / "stubs"
    stubs.mkdir()
    for tool in ("virsh", "genisoimage"):
        path = stubs / tool
        path.write_text(STUB.format(log=workdir / "calls.log"))
        path.chmod(0o755)
    (workdir / "replay.sh").write_text(script)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(workdir), "LC_ALL": "C.UTF-8"}
    return subprocess.run(["bash", "replay.sh"], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)


def expected_text(value: str) -> str:
    return value.replace("\r\n", "\n").replace("\r", "\n")


@pytest.mark.parametrize("field", sorted(FIELDS))
def test_hostile_strings_are_refused_or_inert(field, tmp_path, tally):
    for n, template in enumerate(HOSTILE):
        tally["cases"] += 1
        case = tmp_path / f"case{n}"
        case.mkdir()
        canary = case / CANARY
        value = template.format(c=canary)
        stack = case / "stack.py"
        slots = {**DEFAULTS, **FIELDS[field](repr(value)), "n": n}
        stack.write_text(BASE.replace("CLOUD_INIT", CLOUD_INIT).format(**slots))
        code, out, err = run_cli("plan", str(stack), "--commands")
        tally["internal"] += "internal error" in err or "Traceback" in err
        raw = bool(re.search("[\x00-\x08\x0b-\x1f\x7f]", out + err.replace("\n", "")))
        tally["raw"] += raw
        assert not raw, f"raw control characters in the output for {value!r}:\n{out}{err}"
        if code == 1:
            assert err.startswith("error: stack is invalid"), f"{field} {value!r}: {err}"
            lines = error_lines(err)
            assert lines and all(m["address"].startswith("local/") for m in lines), err
            tally["refused"] += 1
            continue
        assert code == 0, f"{field} {value!r}: exit {code}\n{out}{err}"
        tally["accepted"] += 1
        script = out[out.index("#!/bin/sh") :]
        syntax = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
        tally["syntax"] += syntax.returncode != 0
        assert syntax.returncode == 0, f"bash -n fails for {field} {value!r}:\n{syntax.stderr}\n{script}"
        run = sandbox_run(script, case)
        injected = canary.exists() or any(p.name == CANARY for p in case.rglob("*"))
        tally["injections"] += injected
        assert not injected, f"{field} {value!r} ran an injected command:\n{script}"
        assert run.returncode == 0, f"{field} {value!r}: the script failed:\n{run.stdout}{run.stderr}\n{script}"
        mangled = check_documents(field, value, case, (case / "calls.log").read_text())
        tally["mangled"] += bool(mangled)
        assert not mangled, f"{field} {value!r}: {mangled}"
        if field in APPLIED:
            applied = case / "applied.py"
            applied.write_text(BASE.replace("CLOUD_INIT", "None").format(**slots))
            unclean = apply_then_plan(applied)
            tally["unclean"] += bool(unclean)
            assert not unclean, f"{field} {value!r}: after apply, plan still shows {unclean}"


def check_documents(field: str, value: str, case: Path, calls: str) -> str | None:
    """What the script wrote and passed on must be the value itself (normalised newlines)."""
    want = expected_text(value)
    domain = ET.parse(case / "domain-hs.xml").getroot()
    if field == "description" and (domain.findtext("description") or "") != want:
        return f"domain description is {domain.findtext('description')!r}"
    if field == "cmdline" and domain.findtext("os/cmdline") != want:
        return f"cmdline is {domain.findtext('os/cmdline')!r}"
    if field == "pool_path":
        pool = ET.parse(case / "pool-hs-pool.xml").getroot()
        if pool.findtext("target/path") != "/srv/" + want:
            return f"pool path is {pool.findtext('target/path')!r}"
    if field in ("backing_path", "copy_of") and ("/srv/img/" + value) not in calls:
        return "the image path does not reach virsh as one argument"
    seed = {p.name: p.read_text() for p in (case / "seed-hs").iterdir()}
    if field == "user_data" and seed["user-data"] != "#cloud-config\n" + want:
        return f"user-data is {seed['user-data']!r}"
    if field == "user_data_secret" and (want in seed["user-data"] or seed["user-data"].strip() != "(sensitive)"):
        return "a secret user-data reached the script"
    if field == "meta_data" and seed["meta-data"] != want:
        return f"meta-data is {seed['meta-data']!r}"
    if field in ("instance_id", "ssh_keys"):  # YAML scalars written as JSON strings
        import json

        scalars = re.findall(r'^\s*(?:-\s+|[\w-]+:\s+)(".*")$', seed["meta-data"] + seed["user-data"], re.M)
        if want not in [json.loads(x) for x in scalars]:
            return f"{want!r} is not one of the seed's values"
    return None


def apply_then_plan(stack_file: Path) -> list[str]:
    """Apply on the test driver, plan again in the same connection: the fields still changing."""
    with Engine(load_stack(stack_file)) as engine:
        plan, observation = engine.plan()
        engine.apply(plan, observation)
        again, _ = engine.plan()
        return [f"{c.address} {[fc.field for fc in c.changes]}" for c in again.changes]


def test_the_sandbox_catches_an_injection(tmp_path):
    """The canary works: an unquoted value in a script does create it."""
    canary = tmp_path / CANARY
    run = sandbox_run(f"virsh desc vm --new-desc $(touch {canary})\n", tmp_path)
    assert run.returncode == 0 and canary.exists()


def test_a_hostile_stack_file_name_is_refused(tmp_path):
    """The stack's name comes from its file name unless declared: a newline or ';' in it is an error."""
    for name in ("a\nb.py", "x;touch y.py", "$(id).py", "a b.py"):
        stack = tmp_path / name
        stack.write_text('from virtplan import Host\nHost("local", "test:///default")\n')
        code, _out, err = run_cli("plan", str(stack), "--commands")
        assert code == 1 and "is not a valid name" in err and "name_stack" in err, err
        assert "a\nb" not in err, "the newline is shown escaped"


def test_a_hostile_host_uri_is_quoted(tmp_path):
    """The URI exported in the script is quoted too."""
    from virtplan.views.virsh import script

    stack = tmp_path / "u.py"
    stack.write_text('from virtplan import Host, Pool\nHost("local", "test:///default")\nPool("p", path="/p")\n')
    with Engine(load_stack(stack)) as engine:
        plan, _ = engine.plan()
    canary = tmp_path / CANARY
    plan.hosts = {"local": f"test:///default?x='$(touch {canary})\n`touch {canary}`"}
    text = script(plan, {c.address: ["true"] for c in plan.changes})
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    sandbox_run(text, tmp_path)
    assert not canary.exists()
