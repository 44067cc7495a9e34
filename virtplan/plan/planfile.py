"""Saved plans: a Plan as a JSON document to review, keep and apply later.

The document holds every change (address, action, reason as text and as a code with the
fields that decided it, field diffs with policies, destructive mark, dependencies), the
virtplan version, the stack file's content hash, and a fingerprint of every observed
object the plan depends on (each declared address, absent ones as null, and every object
the stack owns). `apply plan.json` refuses, naming the objects, when any of that no longer
holds, then applies exactly those changes.

No secret reaches the document: values derived from secrets (the cloud-init seed digest,
a console password's digest) are replaced by the marker "(sensitive)". To still prove at
apply time that the secrets are the ones that were planned, the document keeps a salted
scrypt hash of each masked value (a slow hash, so a plan file is no shortcut to guessing
a password).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import secrets as _secrets
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from virtplan.errors import VirtplanError
from virtplan.hosts.observe import HostState, ObservedObject
from virtplan.hosts.records import Records
from virtplan.model import VM, Stack
from virtplan.plan.changes import Action, FieldChange, Plan, Reason, ResourceChange
from virtplan.plan.ownership import owned_objects

FORMAT = "virtplan-plan"
FORMAT_VERSION = 1
SENSITIVE = "(sensitive)"
#: Fields whose values are derived from secrets: (kind, field) -> how to mask a value.
SECRET_FIELDS = {("vm", "cloud_init"), ("vm", "graphics")}
_VOLATILE = {
    "volume": ("allocation", "physical", "target/timestamps"),
    "pool": ("capacity", "allocation", "available"),
}
_SCRYPT = {"n": 2**13, "r": 8, "p": 1, "dklen": 32}


class PlanFileError(VirtplanError):
    """The file is not a plan this virtplan can apply."""


class StalePlan(VirtplanError):
    """The saved plan no longer matches the stack or the hosts; nothing was applied."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"stale plan: {problems[0]}; run plan again")
        else:
            lines = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"stale plan, nothing was applied; run plan again:\n{lines}")


# -- masking --------------------------------------------------------------------------
def mask(kind: str, field: str, value: Any) -> Any:
    """`value` with anything derived from a secret replaced by the marker."""
    if (kind, field) not in SECRET_FIELDS or value is None:
        return value
    if field == "graphics":
        if isinstance(value, dict) and value.get("password") is not None:
            return {**value, "password": SENSITIVE}
        return value
    return SENSITIVE


def _masked_fields(change: ResourceChange) -> list[FieldChange]:
    return [
        FieldChange(fc.field, mask(change.kind, fc.field, fc.before), mask(change.kind, fc.field, fc.after), fc.policy)
        for fc in change.changes
    ]


def _secret_hash(salt: str, value: Any, slow: bool) -> str:
    data = json.dumps(value, sort_keys=True, default=str).encode()
    if slow:
        return hashlib.scrypt(data, salt=bytes.fromhex(salt), **_SCRYPT).hex()
    return hashlib.sha256(bytes.fromhex(salt) + data).hexdigest()


def _has_secret(resource: Any, field: str) -> bool:
    if not isinstance(resource, VM):
        return True  # unknown: treat as secret
    if field == "cloud_init":
        return resource.cloud_init is not None and resource.cloud_init.has_secret
    if field == "graphics":
        return resource.graphics is not None and resource.graphics.password is not None
    return True


def secret_hashes(plan: Plan, stack: Stack, salt: str, unbound: Iterable[str] = ()) -> dict[str, dict[str, str]]:
    """address -> field -> hash of the real (unmasked) after-value of each masked field;
    not for changes on the `unbound` hosts (see `unbound_changes`)."""
    declared = stack.by_address()
    skip = set(unbound)
    out: dict[str, dict[str, str]] = {}
    for change in plan.changes:
        if change.host in skip:
            continue
        for fc in change.changes:
            if mask(change.kind, fc.field, fc.after) != fc.after:
                slow = _has_secret(declared.get(change.address), fc.field)
                out.setdefault(change.address, {})[fc.field] = _secret_hash(salt, fc.after, slow)
    return out


def unbound_changes(plan: Plan, unbound: Iterable[str]) -> list[str]:
    """Changes with secret-derived values on hosts where the stack has no key yet (it was
    never applied there): their values are digests under a key that dies with the planning
    process, so they cannot be bound by hash; the stack file's hash still binds the stack."""
    skip = set(unbound)
    return sorted(
        c.address
        for c in plan.changes
        if c.host in skip and any(mask(c.kind, fc.field, fc.after) != fc.after for fc in c.changes)
    )


# -- fingerprints ---------------------------------------------------------------------
def stable_fingerprint(obj: ObservedObject) -> str:
    """The object's definition and runtime state, without usage counters (a volume's
    allocation and timestamps, a pool's free space) that change on their own."""
    xml = obj.xml
    volatile = _VOLATILE.get(obj.kind)
    if volatile and xml:
        root = ET.fromstring(xml)
        for path in volatile:
            parent_path, _, tag = path.rpartition("/")
            parent = root.find(parent_path) if parent_path else root
            if parent is not None:
                for el in parent.findall(tag):
                    parent.remove(el)
        xml = ET.tostring(root, encoding="unicode")
    blob = json.dumps([obj.uuid, xml, obj.spec], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def observed_fingerprints(stack: Stack, hosts: dict[str, HostState], store: Records) -> dict[str, str | None]:
    """address -> fingerprint for every object the plan depends on: each declared address
    (None when absent) and every object the stack owns, except VMs' console logs."""
    out: dict[str, str | None] = {}
    for resource in stack.managed():
        assert resource.host is not None
        host = hosts.get(resource.host.name)
        obj = host.get(resource.kind, resource.key) if host is not None else None
        out[resource.address] = stable_fingerprint(obj) if obj is not None else None
    for host in hosts.values():
        logs = {a for a, r in store.records(host.uri).items() if r.get("log_of")}
        for obj in owned_objects(host, store, stack.key):
            address = f"{host.name}/{obj.kind}/{obj.key}"
            if address not in logs:  # console logs grow on their own
                out[address] = stable_fingerprint(obj)
    return dict(sorted(out.items()))


# -- the document ---------------------------------------------------------------------
def change_dict(change: ResourceChange) -> dict[str, Any]:
    return {
        "address": change.address,
        "host": change.host,
        "kind": change.kind,
        "key": change.key,
        "action": change.action.value,
        "symbol": change.symbol,
        "reason": change.why,
        "reason_code": change.reason.value,
        "reason_fields": list(change.reason_fields),
        "changes": [fc.__dict__.copy() for fc in _masked_fields(change)],
        "destructive": change.destructive,
        "depends_on": list(change.depends_on),
        "moved_from": change.moved_from,
        **({"placement": change.placement} if change.placement else {}),
        **({"move": change.move} if change.move else {}),
    }


def plan_document(
    plan: Plan,
    stack: Stack,
    hosts: dict[str, HostState],
    store: Records,
    stack_file: str | os.PathLike[str] | None = None,
    drift: list[dict[str, Any]] | None = None,
    commands: dict[str, list[str]] | None = None,
    destroy: bool = False,
    unbound_hosts: Iterable[str] = (),
) -> dict[str, Any]:
    """The plan as a JSON-ready dict, secrets masked (see the module docstring).
    `unbound_hosts`: hosts where the stack has no key of keyed digests yet."""
    fingerprints = observed_fingerprints(stack, hosts, store)
    salt = _secrets.token_hex(16)
    changes = []
    for change in plan.changes:
        item = change_dict(change)
        item["fingerprint"] = fingerprints.get(change.address)
        if commands is not None:
            item["commands"] = commands.get(change.address, [])
        changes.append(item)
    counts = plan.counts()
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "virtplan_version": plan.version,
        "created_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "stack": plan.stack,
        "stack_file": _display_path(stack_file if stack_file is not None else stack.path),
        "stack_hash": plan.stack_hash,
        "destroy": destroy,
        "targets": list(plan.targets),
        "replace": list(plan.replace),
        "hosts": dict(plan.hosts),
        "summary": {a.value: counts[a] for a in Action},
        "changes": changes,
        "drift": drift or [],
        "observed": fingerprints,
        "secrets": {
            "salt": salt,
            "hashes": secret_hashes(plan, stack, salt, unbound_hosts),
            "unbound": unbound_changes(plan, unbound_hosts),
        },
    }


def _display_path(path: str | os.PathLike[str] | None) -> str | None:
    """The stack file as the user named it, relative to the working folder when inside it."""
    if path is None:
        return None
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return str(p)


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str) + "\n"


def write_plan(doc: dict[str, Any], path: Path) -> None:
    """Write atomically, so a reader never sees half a plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(dumps(doc))
    os.replace(tmp, path)


def looks_like_plan_file(path: Path) -> bool:
    """True for a saved plan (by content), False for a stack program."""
    if path.suffix == ".py":
        return False
    try:
        with path.open("rb") as f:
            head = f.read(512).lstrip()
    except OSError:
        return False
    return head.startswith(b"{") and FORMAT.encode() in head


def read_plan(path: Path) -> dict[str, Any]:
    """Load and check a saved plan's format and version."""
    from virtplan._version import __version__

    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanFileError(f"plan file {path} not found") from None
    except (OSError, ValueError) as exc:
        raise PlanFileError(f"{path} is not a readable plan file: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise PlanFileError(f"{path} is not a virtplan plan (write one with `virtplan plan STACK --out {path}`)")
    if doc.get("format_version") != FORMAT_VERSION:
        raise PlanFileError(
            f"{path} has plan format {doc.get('format_version')!r}; this virtplan reads format {FORMAT_VERSION}"
        )
    if doc.get("virtplan_version") != __version__:
        raise StalePlan([f"it was made by virtplan {doc.get('virtplan_version')}, this is virtplan {__version__}"])
    codes = {r.value for r in Reason}
    if any(c.get("reason_code") not in codes for c in doc.get("changes", [])):
        raise PlanFileError(f"{path} has a change without a known reason code: it was made by an earlier virtplan; "
                            "run plan again")  # fmt: skip
    return doc


def plan_from_document(doc: dict[str, Any]) -> Plan:
    """The Plan a document describes (secret-derived values stay masked)."""
    changes = [
        ResourceChange(
            c["address"],
            c["host"],
            c["kind"],
            c["key"],
            Action(c["action"]),
            Reason(c["reason_code"]),
            [FieldChange(f["field"], f["before"], f["after"], f["policy"]) for f in c["changes"]],
            c.get("destructive"),
            list(c.get("depends_on", [])),
            c.get("fingerprint"),
            list(c.get("reason_fields", [])),
            c.get("moved_from"),
            c.get("placement"),
            c.get("move"),
        )
        for c in doc["changes"]
    ]
    return Plan(doc["stack"], doc["stack_hash"], changes, dict(doc["hosts"]), doc.get("virtplan_version", ""),
                list(doc.get("targets") or []), list(doc.get("replace") or []))  # fmt: skip


# -- staleness ------------------------------------------------------------------------
def stack_file_of(doc: dict[str, Any], plan_path: Path) -> Path:
    """Where the planned stack file is now: as recorded (from the working folder), else
    beside the plan file."""
    recorded = doc.get("stack_file")
    if not recorded:
        raise PlanFileError(f"{plan_path} does not say which stack file it was made from")
    candidate = Path(recorded)
    if candidate.is_file() or candidate.is_absolute():
        return candidate
    beside = plan_path.parent / candidate
    return beside if beside.is_file() else candidate


def check_stack_file(doc: dict[str, Any], stack_file: Path) -> None:
    """Refuse when the stack file changed (or vanished) since planning."""
    if not stack_file.is_file():
        raise StalePlan([f"the stack file {stack_file} no longer exists"])
    now = hashlib.sha256(stack_file.read_bytes()).hexdigest()
    if now != doc.get("stack_hash"):
        raise StalePlan([f"the stack file {stack_file} changed after this plan was made"])


def _object_name(address: str, multi_host: bool) -> str:
    host, kind, key = address.split("/", 2)
    return f"{kind} {key} on host {host}" if multi_host else f"{kind} {key}"


def check_current(doc: dict[str, Any], plan: Plan, stack: Stack, hosts: dict[str, HostState], store: Records) -> None:
    """Refuse, naming the objects, unless `plan` (computed now, from the live hosts) is the
    saved plan: same fingerprints, same changes, same secrets."""
    multi = len(doc.get("hosts", {})) > 1
    problems: list[str] = []
    then: dict[str, str | None] = doc.get("observed", {})
    now = observed_fingerprints(stack, hosts, store)
    for address in sorted(set(then) | set(now)):
        before, after = then.get(address), now.get(address)
        if before == after:
            continue
        name = _object_name(address, multi)
        if before is not None and after is None:
            problems.append(f"{name} was deleted after this plan was made")
        elif before is None:
            problems.append(f"{name} appeared after this plan was made")
        else:
            problems.append(f"{name} was changed after this plan was made")
    if problems:
        raise StalePlan(problems)
    saved = {c["address"]: _comparable(c) for c in doc.get("changes", [])}
    current = {c.address: _comparable(change_dict(c)) for c in plan.changes}
    for address in sorted(set(saved) | set(current)):
        if saved.get(address) != current.get(address):
            problems.append(f"the planned change of {_object_name(address, multi)} is different now")
    secret_info = doc.get("secrets") or {}
    salt = secret_info.get("salt", "")
    expected = secret_info.get("hashes", {})
    actual = secret_hashes(plan, stack, salt) if salt else {}
    for address in secret_info.get("unbound", []):
        actual.pop(address, None)
    for address in sorted(set(expected) | set(actual)):
        if expected.get(address) != actual.get(address):
            then_, now_ = expected.get(address, {}), actual.get(address, {})
            fields = sorted(f for f in set(then_) | set(now_) if then_.get(f) != now_.get(f))
            name = _object_name(address, multi)
            problems.append(f"the secret values of {name} ({', '.join(fields)}) changed after this plan was made")
    if problems:
        raise StalePlan(problems)


def _comparable(change: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(change)
    out.pop("fingerprint", None)
    out.pop("commands", None)
    move = out.get("move")
    if isinstance(move, dict):  # a running guest's disks grow as it writes: the bytes are an estimate
        move.pop("copy_bytes", None)
        for disk in move.get("disks") or []:
            disk.pop("bytes", None)
        out["reason"] = re.sub(r", copying [^(]* of disk", "", str(out.get("reason", "")))
    normal: dict[str, Any] = json.loads(json.dumps(out, sort_keys=True, default=str))
    return normal
