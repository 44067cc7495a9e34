"""What a plan is made of: actions, reasons, field changes, resource changes, the plan.

Plain data shared by the planner (which makes plans), apply (which runs them), saved
plans and the views. Every change says why it is planned with a `Reason` from a closed
set plus the fields involved; its human text is derived from those in one place,
`reason_text`, which the text, Markdown and virsh views and the plan file all print.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, assert_never

from virtplan.errors import FieldError, VirtplanError


class Action(StrEnum):
    CREATE = "create"
    UPDATE = "update"  # applied live, or to the config of a stopped VM
    RESTART = "restart"  # config changed; the running VM restarts gracefully
    REPLACE = "replace"
    DELETE = "delete"
    MIGRATE = "migrate"  # a VM moves to another host (live when it can), with its disks


class Reason(StrEnum):
    """Why a change is planned (as OpenTofu's ResourceInstanceChangeActionReason).

    Each action has its reasons: create MISSING; update FIELDS_CHANGED, REPLUG or RENAMED;
    restart NEEDS_RESTART or RENAMED; replace FORCES_REPLACEMENT, INTERRUPTED or
    REPLACE_REQUESTED; delete REMOVED_FROM_STACK or DESTROY_REQUESTED; migrate HOST_CHANGED.
    A change's `reason_fields` name the fields that decided it."""

    MISSING = "missing"  # declared, not on the host
    FIELDS_CHANGED = "fields_changed"  # declared fields differ; all can change in place
    NEEDS_RESTART = "needs_restart"  # fields that take effect after a restart changed on a running object
    FORCES_REPLACEMENT = "forces_replacement"  # fields that cannot change in place changed
    INTERRUPTED = "interrupted"  # virtplan's own create was cut short (an upload): made again
    REPLACE_REQUESTED = "replace_requested"  # `--replace ADDRESS`
    RENAMED = "renamed"  # declared with renamed_from: the object on the host is renamed (moved_from: its old key)
    REPLUG = "replug"  # a running VM's NICs re-plugged after their network restarts (reason_fields: the networks)
    REMOVED_FROM_STACK = "removed_from_stack"  # owned by the stack, no longer declared
    DESTROY_REQUESTED = "destroy_requested"  # `virtplan destroy`
    HOST_CHANGED = "host_changed"  # a VM's host changed (declared, or chosen by its placement)


#: What a rename costs, by kind and action (libvirt renames only stopped domains, and no
#: networks or volumes at all).
RENAME_COST = {
    ("vm", Action.RESTART): "; libvirt renames only stopped domains: the running VM is shut down and started again",
    ("network", Action.RESTART): (
        "; libvirt cannot rename a network: it is defined again under the new name with the same UUID and "
        "restarted, and the running guests' NICs are re-plugged"
    ),
    ("network", Action.UPDATE): "; libvirt cannot rename a network: it is defined again under the new name, same UUID",
    ("volume", Action.UPDATE): (
        "; libvirt cannot rename a volume: its data is copied on the host to the new name, then the old one is deleted"
    ),
}

SYMBOLS = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.RESTART: "~",
    Action.REPLACE: "-/+",
    Action.DELETE: "-",
    Action.MIGRATE: "->",
}


@dataclass
class FieldChange:
    """One field a change sets: its value before and after, and the policy that applies."""

    field: str
    before: Any
    after: Any
    policy: str


@dataclass
class ResourceChange:
    """One change of a plan: what it does to which object, why, and what it waits for."""

    address: str
    host: str
    kind: str
    key: str
    action: Action
    reason: Reason
    changes: list[FieldChange] = field(default_factory=list)
    destructive: str | None = None
    depends_on: list[str] = field(default_factory=list)
    fingerprint: str | None = None
    reason_fields: list[str] = field(default_factory=list)
    moved_from: str | None = None  # a rename: the object's key on the host now (its old name)
    #: Why a placed VM is on its host (`virtplan.model.placement`), for creates and moves.
    placement: str | None = None
    #: A migrate's details (`virtplan.plan.moves.Move.describe`): the source host, whether
    #: it is live, the disks copied and their bytes, what is deleted on the source after.
    move: dict[str, Any] | None = None

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.action]

    @property
    def why(self) -> str:
        """The reason as a reviewer reads it (see `reason_text`)."""
        return reason_text(self)


def reason_text(change: ResourceChange) -> str:
    """The one wording of a change's reason, from its Reason, reason fields and field diffs."""
    fields = ", ".join(change.reason_fields)
    match change.reason:
        case Reason.MISSING:
            return "missing on the host"
        case Reason.FIELDS_CHANGED:
            return f"{fields} changed"
        case Reason.NEEDS_RESTART:
            changed = ", ".join(fc.field for fc in change.changes)
            if change.kind == "network":
                return f"{changed} changed; the network restarts"
            return f"{changed} changed; {fields} take effect after a restart"
        case Reason.FORCES_REPLACEMENT:
            return f"{fields} changed, which forces replacement"
        case Reason.REPLUG:
            return f"network {fields} restarts under it: its NICs are re-plugged live"
        case Reason.INTERRUPTED:
            return "virtplan's upload of it was interrupted; it is made again"
        case Reason.REPLACE_REQUESTED:
            return "replacement requested (--replace)"
        case Reason.RENAMED:
            return f"renamed from {change.moved_from}{RENAME_COST.get((change.kind, change.action), '')}"
        case Reason.REMOVED_FROM_STACK:
            return "removed from the stack"
        case Reason.DESTROY_REQUESTED:
            return "destroy requested"
        case Reason.HOST_CHANGED:
            return _move_text(change)
        case unknown:
            assert_never(unknown)


def _move_text(change: ResourceChange) -> str:
    move = change.move or {}
    how = "live" if move.get("live") else "stopped"
    size = move.get("copy_bytes")
    copied = f", copying {_size(size)} of disk" if isinstance(size, int) and move.get("disks") else ""
    why = f" (placement: {change.placement})" if change.placement else ""
    return f"host changed: moves {how} from {move.get('source', '?')} to {change.host}{copied}{why}"


def _size(n: int) -> str:
    from virtplan.units import format_size

    return format_size(n)


@dataclass
class Plan:
    """An ordered list of changes for one stack, plus where it came from."""

    stack: str
    stack_hash: str
    changes: list[ResourceChange]
    hosts: dict[str, str]  # host name -> URI
    version: str = ""
    targets: list[str] = field(default_factory=list)  # `--target`: only these and what they need
    replace: list[str] = field(default_factory=list)  # `--replace`: replaced even though they match

    @property
    def empty(self) -> bool:
        return not self.changes

    def destructive(self) -> list[ResourceChange]:
        return [c for c in self.changes if c.destructive]

    def counts(self) -> dict[Action, int]:
        counts = dict.fromkeys(Action, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    def for_host(self, host: str) -> list[ResourceChange]:
        return [c for c in self.changes if c.host == host]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def keep_targets(self, targets: list[str]) -> None:
        """Keep only the changes of `targets` and of everything they wait for, transitively
        (what they depend on; for a deletion, the deletions that must go first): as
        Terraform's `-target`. Raises PlanError for a target that is neither declared nor
        among the changes (`known`: every address the stack declares or owns)."""
        self.targets = list(targets)
        by_address = {c.address: c for c in self.changes}
        keep: set[str] = set()
        todo = [t for t in targets if t in by_address]
        while todo:
            address = todo.pop()
            if address not in keep:
                keep.add(address)
                todo += [d for d in by_address[address].depends_on if d in by_address]
        self.changes = [c for c in self.changes if c.address in keep]


class PlanError(VirtplanError):
    """The plan cannot be made: ownership clashes or changes virtplan refuses."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        lines = "\n".join(f"  - {e}" for e in errors)
        super().__init__(f"cannot plan; nothing was changed:\n{lines}")
