"""The source stack, as a clone's program reads it: `SOURCE = source_stack("lab.py")`.

A clone's program takes what it must not copy into its own text from the source program
at load time: cloud-init settings (secrets included) and graphics passwords. The source
is loaded read-only: its resources never join the stack being loaded.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.workflows.clone.options import CloneError

if TYPE_CHECKING:
    from virtplan.model import VM, CloudInit, Stack


class SourceStack:
    """A source stack program loaded read-only, for a clone program to take settings from
    (its resources are not part of the clone)."""

    def __init__(self, stack: Stack):
        self.stack = stack

    def vm(self, name: str) -> VM:
        for vm in self.stack.vms:
            if vm.name == name:
                return vm
        raise CloneError(f"source stack {self.stack.name!r} no longer declares VM {name!r}")

    def cloud_init(self, vm: str, *, hostname: str, instance_id: str) -> CloudInit | None:
        """The source VM's cloud-init settings with a new identity (raw meta-data dropped:
        it is generated from the new hostname and instance-id)."""
        ci = self.vm(vm).cloud_init
        if ci is None:
            return None
        return dataclasses.replace(ci, hostname=hostname, instance_id=instance_id, meta_data=None)


_sources: dict[Path, SourceStack] = {}


def source_stack(path: str | os.PathLike[str]) -> SourceStack:
    """Load a source stack program (relative paths: from the calling stack's folder)
    without adding its resources to the stack being loaded. Loaded once per process."""
    from virtplan.model import Stack, collecting, current_stack

    file = Path(path)
    if not file.is_absolute():
        current = current_stack()
        base = current.path.parent if current is not None and current.path is not None else Path.cwd()
        file = base / file
    file = file.resolve()
    if file not in _sources:
        import runpy

        if not file.is_file():
            raise CloneError(f"source stack program {file} not found (the clone takes cloud-init settings from it)")
        stack = Stack(file.stem, file)
        with collecting(stack):
            runpy.run_path(str(file), run_name=f"virtplan_source_{file.stem}")
        _sources[file] = SourceStack(stack)
    return _sources[file]
