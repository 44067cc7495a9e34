"""virtplan: infrastructure as code for libvirt.

Declare hosts, networks, pools, volumes and VMs in a Python stack program; virtplan reads
the actual state from libvirt, shows a reviewable plan, and applies exactly that plan.
Importing this package does not import libvirt, the CLI or Pulumi; the model (what
`from virtplan import VM` gives) is imported on first use, so the command line can start
connecting to hosts before it (see `virtplan.cli.early`).
"""

from __future__ import annotations

from virtplan._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (see virtplan.cli.early)
if TYPE_CHECKING:
    from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in __all__:
        import virtplan.model

        return getattr(virtplan.model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
