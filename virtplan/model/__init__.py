"""The declarative model: resource classes, the stack, and its validation (no libvirt)."""

from virtplan.model.identity import name_stack
from virtplan.model.load import load_stack, use_templates
from virtplan.model.registry import collecting, current_stack
from virtplan.model.resources import (
    NIC,
    VM,
    CloudInit,
    Disk,
    Graphics,
    Host,
    Network,
    Placement,
    Pool,
    Resource,
    Volume,
)
from virtplan.model.secrets import Secret
from virtplan.model.snapshot import Snapshot
from virtplan.model.stack import Stack
from virtplan.model.validate import validate

__all__ = [
    "NIC", "VM", "CloudInit", "Disk", "Graphics", "Host", "Network", "Placement", "Pool", "Resource", "Secret",
    "Snapshot", "Stack", "Volume", "collecting", "current_stack", "load_stack", "name_stack", "use_templates",
    "validate",
]  # fmt: skip
