"""virtplan: infrastructure as code for libvirt.

Declare hosts, networks, pools, volumes and VMs in a Python stack program; virtplan reads
the actual state from libvirt, shows a reviewable plan, and applies exactly that plan.
Importing this package does not import libvirt, the CLI or Pulumi.
"""

from virtplan._version import __version__
from virtplan.model import (
    NIC,
    VM,
    CloudInit,
    Disk,
    Graphics,
    Host,
    Network,
    Placement,
    Pool,
    Secret,
    Snapshot,
    Stack,
    Volume,
    current_stack,
    load_stack,
    name_stack,
    use_templates,
)

__all__ = [
    "NIC", "VM", "CloudInit", "Disk", "Graphics", "Host", "Network", "Placement", "Pool", "Secret", "Snapshot", "Stack",
    "Volume", "__version__", "current_stack", "load_stack", "name_stack", "use_templates",
]  # fmt: skip
