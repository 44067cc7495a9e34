"""Saved plan documents: round trip, secrets masked and checked by hash, staleness found
and named, fingerprints blind to usage counters."""

from __future__ import annotations

import copy
import json

import pytest
from plan_review_fixtures import PASSWORD, VNC_PASSWORD, lab, renderer_for, scenario

from virtplan.hosts.observe import ObservedObject
from virtplan.model.secrets import Secret
from virtplan.plan.planfile import (
    FORMAT,
    PlanFileError,
    StalePlan,
    check_current,
    looks_like_plan_file,
    plan_document,
    plan_from_document,
    read_plan,
    stable_fingerprint,
    write_plan,
)
from virtplan.plan.planner import make_plan


@pytest.mark.parametrize("kind", ["create", "change", "none"])
def test_round_trip(tmp_path, kind):
    stack, plan, observed, store, _ = scenario(tmp_path, kind)
    doc = plan_document(plan, stack, observed, store)
    path = tmp_path / "plan.json"
    write_plan(doc, path)
    assert looks_like_plan_file(path) and not looks_like_plan_file(tmp_path / "x.py")
    loaded = read_plan(path)
    assert loaded == json.loads(json.dumps(doc))
    again = plan_from_document(loaded)
    assert (again.stack, again.stack_hash, again.hosts, again.version) == (plan.stack, plan.stack_hash, plan.hosts,
                                                                           plan.version)  # fmt: skip
    assert len(again.changes) == len(plan.changes)
    for a, b in zip(again.changes, plan.changes, strict=True):
        assert (a.address, a.host, a.kind, a.key, a.action, a.reason, a.reason_fields, a.destructive,
                a.depends_on) == (b.address, b.host, b.kind, b.key, b.action, b.reason, b.reason_fields,
                                  b.destructive, b.depends_on)  # fmt: skip
        assert [(f.field, f.policy) for f in a.changes] == [(f.field, f.policy) for f in b.changes]
        for fa, fb in zip(a.changes, b.changes, strict=True):
            if fa.field not in ("cloud_init", "graphics"):
                assert (fa.before, fa.after) == (fb.before, fb.after)
    # a plan of a plan document is the same document
    assert plan_document(again, stack, observed, store)["changes"] == doc["changes"]


def test_no_secret_in_the_document(tmp_path):
    stack, plan, observed, store, _ = scenario(tmp_path, "create")
    text = json.dumps(plan_document(plan, stack, observed, store))
    for secret in (PASSWORD, VNC_PASSWORD):
        digest = Secret(secret).digest()
        for form in (secret, digest, digest[:16]):
            assert form not in text
    vm = next(c for c in json.loads(text)["changes"] if c["address"] == "kvm1/vm/web1")
    fields = {f["field"]: f["after"] for f in vm["changes"]}
    assert fields["cloud_init"] == "(sensitive)"
    assert fields["graphics"] == {"type": "vnc", "listen": "127.0.0.1", "password": "(sensitive)"}


def test_secret_changed_since_planning_is_refused(tmp_path):
    stack, plan, observed, store, _renderer = scenario(tmp_path, "create")
    doc = plan_document(plan, stack, observed, store)
    check_current(doc, plan, stack, observed, store)  # the same: accepted
    other = lab(password="another-password")
    replan = make_plan(other, renderer_for(other, observed["kvm1"]), observed, store)
    with pytest.raises(StalePlan) as err:
        check_current(doc, replan, other, observed, store)
    assert "the secret values of vm web1 (cloud_init) changed after this plan was made" in str(err.value)


def test_stale_objects_are_named(tmp_path):
    stack, plan, observed, store, _renderer = scenario(tmp_path, "change")
    doc = plan_document(plan, stack, observed, store)
    host = observed["kvm1"]
    host.objects[("network", "lab-net")].spec["domain"] = "elsewhere.test"
    del host.objects[("volume", "lab-pool/base.qcow2")]
    with pytest.raises(StalePlan) as err:
        check_current(doc, plan, stack, observed, store)
    message = str(err.value)
    assert message.startswith("stale plan, nothing was applied; run plan again:")
    assert "  - network lab-net was changed after this plan was made" in message
    assert "  - volume lab-pool/base.qcow2 was deleted after this plan was made" in message


@pytest.mark.parametrize(("key", "value"), [("reason", "something else"), ("reason_code", "missing"),
                                            ("reason_fields", ["memory"])])  # fmt: skip
def test_changed_plan_is_refused(tmp_path, key, value):
    stack, plan, observed, store, _ = scenario(tmp_path, "change")
    doc = plan_document(plan, stack, observed, store)
    tampered = copy.deepcopy(doc)
    tampered["changes"][0][key] = value
    with pytest.raises(StalePlan, match=r"stale plan: the planned change of vm old is different now; run plan again"):
        check_current(tampered, plan, stack, observed, store)


def test_reasons_are_saved_as_code_fields_and_text(tmp_path):
    stack, plan, observed, store, _ = scenario(tmp_path, "change")
    doc = plan_document(plan, stack, observed, store)
    saved = {c["address"]: (c["action"], c["reason_code"], c["reason_fields"], c["reason"]) for c in doc["changes"]}
    assert saved["kvm1/vm/old"] == ("delete", "removed_from_stack", [], "removed from the stack")
    assert saved["kvm1/vm/web1"] == ("update", "fields_changed", ["memory"], "memory changed")
    action, code, fields, text = saved["kvm1/vm/db"]
    assert (action, code) == ("restart", "needs_restart") and "max_memory" in fields
    assert text.endswith(f"; {', '.join(fields)} take effect after a restart")


def test_a_plan_without_reason_codes_is_refused(tmp_path):
    stack, plan, observed, store, _ = scenario(tmp_path, "change")
    doc = plan_document(plan, stack, observed, store)
    del doc["changes"][0]["reason_code"]
    write_plan(doc, tmp_path / "old.json")
    with pytest.raises(PlanFileError, match="without a known reason code: it was made by an earlier virtplan"):
        read_plan(tmp_path / "old.json")


def test_usage_counters_are_not_changes():
    xml = ("<volume><name>v</name><capacity unit='bytes'>10</capacity><allocation unit='bytes'>{}</allocation>"
           "<target><path>/p/v</path><timestamps><atime>{}</atime></timestamps></target></volume>")  # fmt: skip
    spec = {"format": "raw", "capacity": 10, "backing": None}
    one = ObservedObject("volume", "p/v", "/p/v", xml.format(1, 2), spec)
    two = ObservedObject("volume", "p/v", "/p/v", xml.format(4096, 3), spec)
    assert stable_fingerprint(one) == stable_fingerprint(two)
    grown = ObservedObject("volume", "p/v", "/p/v", xml.format(1, 2).replace(">10<", ">20<"), spec | {"capacity": 20})
    assert stable_fingerprint(grown) != stable_fingerprint(one)


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(PlanFileError, match="not found"):
        read_plan(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"hello": 1}')
    with pytest.raises(PlanFileError, match="is not a virtplan plan"):
        read_plan(tmp_path / "other.json")
    (tmp_path / "future.json").write_text(json.dumps({"format": FORMAT, "format_version": 99}))
    with pytest.raises(PlanFileError, match="plan format 99"):
        read_plan(tmp_path / "future.json")
    (tmp_path / "old.json").write_text(json.dumps({"format": FORMAT, "format_version": 1, "virtplan_version": "0.0.1"}))
    with pytest.raises(StalePlan, match="made by virtplan 0.0.1"):
        read_plan(tmp_path / "old.json")


def test_secret_changes_on_a_host_without_a_key_are_listed_as_unbound(tmp_path):
    """A host the stack was never applied to has no key yet: its secret digests die with the
    planning process, so the saved plan cannot bind them (and says so) instead of holding a
    hash anyone could test guesses against."""
    stack, plan, observed, store, _renderer = scenario(tmp_path, "create")
    doc = plan_document(plan, stack, observed, store, unbound_hosts={"kvm1"})
    assert doc["secrets"]["unbound"] == ["kvm1/vm/web1"] and "kvm1/vm/web1" not in doc["secrets"]["hashes"]
    other = lab(password="another-password")
    replan = make_plan(other, renderer_for(other, observed["kvm1"]), observed, store)
    check_current(doc, replan, other, observed, store)  # not bound: the stack file's hash binds the stack
