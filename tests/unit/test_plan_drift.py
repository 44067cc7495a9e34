"""Drift as data: observed vs what virtplan last applied, apart from pending stack edits."""

from __future__ import annotations

from plan_review_fixtures import URI, lab, scenario

from virtplan.plan.drift import MISSING, detect, forget_vanished, record_baseline


def test_drift_is_what_changed_since_apply(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    assert detect(stack, observed, store, renderer).empty
    host = observed["kvm1"]
    host.objects[("vm", "db")].spec["state"] = "stopped"
    host.objects[("network", "lab-net")].spec["domain"] = "x.test"
    del host.objects[("volume", "lab-pool/data.raw")]
    report = detect(stack, observed, store, renderer)
    got = {d.address: (d.status, [(f.field, f.applied, f.actual) for f in d.fields]) for d in report.drifted}
    assert got == {
        "kvm1/vm/db": ("changed", [("state", "running", "stopped")]),
        "kvm1/network/lab-net": ("changed", [("domain", "lab.test", "x.test")]),
        "kvm1/volume/lab-pool/data.raw": ("missing", []),
    }
    assert report.to_list()[2]["status"] == MISSING
    assert report.pending == []


def test_pending_changes_are_not_drift(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "change")  # edited stack, web1 memory drifted
    assert detect(stack, observed, store, renderer).pending == []  # only computed when asked
    report = detect(stack, observed, store, renderer, pending=True)
    assert [d.address for d in report.drifted] == ["kvm1/vm/web1"]
    assert report.drifted[0].fields[0].stack == 768 * 1024**2
    pending = {p.address: p.fields for p in report.pending}
    assert pending["kvm1/vm/web1"] == ["memory"] and pending["kvm1/vm/db"] == ["max_memory"]


def test_records_without_applied_are_untracked_then_completed(tmp_path):
    stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    for address in list(store.records(URI)):
        record = store.records(URI)[address]
        record.pop("applied")
        store.forget(URI, address)
        store.put(URI, address, **record)
    report = detect(stack, observed, store, renderer)
    assert report.empty and len(report.untracked) == len(stack.managed())
    assert record_baseline(stack, observed, store, renderer) == len(stack.managed())
    assert detect(stack, observed, store, renderer).untracked == []


def test_vanished_undeclared_objects_are_forgotten(tmp_path):
    _stack, _plan, observed, store, renderer = scenario(tmp_path, "none")
    del observed["kvm1"].objects[("vm", "old")]
    edited = lab(edited=True)
    assert "kvm1/vm/old" in [d.address for d in detect(edited, observed, store, renderer).drifted]
    assert forget_vanished(edited, observed, store) == ["kvm1/vm/old"]
    assert store.get(URI, "kvm1/vm/old") is None


def test_what_drifted_is_listed_by_address_whatever_order_the_records_are_in(tmp_path):
    stack, _plan, observed, records, renderer = scenario(tmp_path, "none")
    host = observed["kvm1"]

    class Reversed:
        """The same records, handed over in reverse order."""

        def view(self, uri):
            return dict(reversed(list(records.view(uri).items())))

    store = Reversed()
    host.objects[("vm", "db")].spec["state"] = "stopped"
    host.objects[("network", "lab-net")].spec["domain"] = "x.test"
    del host.objects[("volume", "lab-pool/data.raw")]
    addresses = [d.address for d in detect(stack, observed, store, renderer).drifted]
    assert addresses == sorted(addresses) and len(addresses) == 3
