"""The policy table and its refinements: value-dependent policies, the action a set of
field changes makes, how live fields reach a running object, and the risk texts."""

from __future__ import annotations

import pytest

from virtplan.plan.changes import Action, FieldChange, Reason, ResourceChange, reason_text
from virtplan.plan.policy import (
    FIELDS,
    LIVE,
    Delivery,
    Policy,
    change_risk,
    choose_action,
    delete_risk,
    field_policy,
    hot_fields,
    plugged_fields,
    redefines,
)

DISK_A, DISK_B = {"volume": "p/a"}, {"volume": "p/b"}


def test_every_live_field_says_how_it_reaches_the_running_object():
    for kind, fields in FIELDS.items():
        live = {f for f, p in fields.items() if p == Policy.LIVE}
        assert set(LIVE.get(kind, {})) == live, kind


@pytest.mark.parametrize(
    ("kind", "field", "before", "after", "expected"),
    [
        ("vm", "disks", [DISK_A], [DISK_A, DISK_B], Policy.LIVE),  # appended: hot-plugged
        ("vm", "disks", None, [DISK_A], Policy.LIVE),
        ("vm", "disks", [DISK_A, DISK_B], [DISK_A], Policy.LIVE),  # a data disk removed: hot-unplugged
        ("vm", "disks", [DISK_A, DISK_B], [DISK_B], Policy.RESTART),  # the boot disk removed
        ("vm", "disks", [DISK_A, DISK_B], [DISK_B, DISK_A], Policy.RESTART),  # reordered
        ("vm", "nics", [{"mac": "1"}, {"mac": "2"}], [{"mac": "1"}], Policy.RESTART),  # NICs: not unplugged
        ("vm", "nics", [{"mac": "1"}], [{"mac": "2"}], Policy.RESTART),  # changed
        ("volume", "capacity", 2, 3, Policy.LIVE),
        ("volume", "capacity", 3, 2, Policy.IMMUTABLE),  # shrinking is refused
        ("vm", "arch", "i686", "x86_64", Policy.REPLACE),  # the table as is
    ],
)
def test_field_policy_depends_on_the_values(kind, field, before, after, expected):
    assert field_policy(kind, field, before, after) == expected


def diff(name: str, kind: str = "vm") -> FieldChange:
    return FieldChange(name, 1, 2, FIELDS[kind][name].value)


@pytest.mark.parametrize(
    ("kind", "fields", "observed", "desired", "expected"),
    [
        ("vm", ["memory"], {"state": "running"}, {"state": "running"}, (Action.UPDATE, Reason.FIELDS_CHANGED, ["memory"])),
        ("vm", ["memory", "max_memory"], {"state": "running"}, {"state": "running"},
         (Action.RESTART, Reason.NEEDS_RESTART, ["max_memory"])),
        ("vm", ["max_memory"], {"state": "stopped"}, {"state": "running"},
         (Action.UPDATE, Reason.FIELDS_CHANGED, ["max_memory"])),  # starts with the new config
        ("vm", ["max_memory"], {"state": "running"}, {"state": "stopped"},
         (Action.UPDATE, Reason.FIELDS_CHANGED, ["max_memory"])),  # stops anyway
        ("vm", ["arch", "memory"], {"state": "running"}, {"state": "running"},
         (Action.REPLACE, Reason.FORCES_REPLACEMENT, ["arch"])),
        ("network", ["domain"], {"active": True}, {}, (Action.RESTART, Reason.NEEDS_RESTART, ["domain"])),
        ("network", ["domain"], {"active": False}, {}, (Action.UPDATE, Reason.FIELDS_CHANGED, ["domain"])),
    ],
)  # fmt: skip
def test_choose_action(kind, fields, observed, desired, expected):
    assert choose_action(kind, [diff(f, kind) for f in fields], observed, desired) == expected


def test_live_delivery():
    assert hot_fields("vm", ["state", "description", "memory", "disks"]) == ["memory", "description"]
    assert plugged_fields("vm", ["nics", "memory", "disks"]) == ["disks", "nics"]
    assert not redefines("vm", ["memory", "vcpus", "description", "state", "autostart"])
    assert redefines("vm", ["memory", "disks"]) and redefines("vm", ["cmdline"])
    assert not redefines("network", ["reservations", "autostart", "active"]) and redefines("network", ["domain"])
    assert LIVE["vm"]["state"] == Delivery.RUNTIME


def test_risks():
    running = {"state": "running", "disks": [DISK_A]}
    assert change_risk("vm", Action.UPDATE, running, []) is None
    assert change_risk("vm", Action.REPLACE, running, []) == "the running VM is stopped and its domain recreated"
    assert change_risk("vm", Action.REPLACE, {"disks": []}, []) is None
    assert change_risk("network", Action.RESTART, {}, ["a", "b"]) == (
        "running VMs lose connectivity until their NICs are re-plugged: a, b"
    )
    assert change_risk("network", Action.RESTART, {}, []) is None
    assert delete_risk("volume", {}, []) == "the volume and all data on it are deleted"
    assert delete_risk("vm", {"state": "stopped"}, []) is None
    assert delete_risk("network", {}, ["a"]) == "running VMs lose connectivity: a"


@pytest.mark.parametrize(
    ("kind", "action", "reason", "fields", "changed", "text"),
    [
        ("vm", Action.CREATE, Reason.MISSING, [], [], "missing on the host"),
        ("vm", Action.UPDATE, Reason.FIELDS_CHANGED, ["memory", "vcpus"], ["memory", "vcpus"], "memory, vcpus changed"),
        ("vm", Action.RESTART, Reason.NEEDS_RESTART, ["max_vcpus"], ["max_vcpus", "vcpus"],
         "max_vcpus, vcpus changed; max_vcpus take effect after a restart"),
        ("network", Action.RESTART, Reason.NEEDS_RESTART, ["domain"], ["domain", "reservations"],
         "domain, reservations changed; the network restarts"),
        ("vm", Action.REPLACE, Reason.FORCES_REPLACEMENT, ["arch"], ["arch", "memory"],
         "arch changed, which forces replacement"),
        ("vm", Action.DELETE, Reason.REMOVED_FROM_STACK, [], [], "removed from the stack"),
        ("vm", Action.DELETE, Reason.DESTROY_REQUESTED, [], [], "destroy requested"),
    ],
)  # fmt: skip
def test_reason_text(kind, action, reason, fields, changed, text):
    change = ResourceChange(f"h/{kind}/x", "h", kind, "x", action, reason,
                            [FieldChange(f, 1, 2, "live") for f in changed], reason_fields=fields)  # fmt: skip
    assert reason_text(change) == change.why == text


@pytest.mark.parametrize(("before", "after"), [(1673533, 1674215), (1674215, 1673533)])
def test_an_uploaded_volume_whose_image_changed_size_is_replaced_not_resized(before, after):
    # its capacity is its image's size: a new image is uploaded again (libvirt would refuse to
    # resize below the old file's allocation, and a resize would keep the old content anyway)
    assert field_policy("volume", "capacity", before, after, uploaded=True) == Policy.REPLACE
