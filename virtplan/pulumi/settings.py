"""The Pulumi program's settings (the `virtplan:*` config) and what it registered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi

from virtplan.errors import VirtplanError
from virtplan.model import Stack

BACKENDS = ("native", "pulumi-libvirt")


@dataclass(frozen=True)
class Settings:
    """The program's configuration, read and checked."""

    program: Path
    backend: str = "native"
    hosts: dict[str, str] = field(default_factory=dict)
    parallelism: int | None = None


@dataclass
class Registered:
    """What the program registered: Pulumi resources by virtplan address, and the stack outputs."""

    stack: Stack
    resources: dict[str, pulumi.Resource]
    outputs: dict[str, Any]


def read_settings(project_dir: Path) -> Settings:
    """Settings from the `virtplan:*` config of the current Pulumi stack."""
    cfg = pulumi.Config("virtplan")
    program = cfg.get("program") or f"stacks/{pulumi.get_stack()}.py"
    backend = cfg.get("backend") or "native"
    if backend not in BACKENDS:
        raise VirtplanError(f"virtplan:backend is {backend!r}; use one of {', '.join(BACKENDS)}")
    hosts = {}
    for item in cfg.get_object("hosts") or []:
        name, sep, uri = str(item).partition("=")
        if not sep or not name or not uri:
            raise VirtplanError(f"virtplan:hosts item {item!r}: write NAME=URI, e.g. local=qemu:///system")
        hosts[name] = uri
    parallelism = cfg.get_int("parallelism") or None  # 0 (Pulumi.yaml's default): each host's own workers
    if parallelism is not None and parallelism < 0:
        raise VirtplanError(f"virtplan:parallelism is {parallelism}; use a positive number (0: each host's workers)")
    if cfg.get("stateDir"):
        raise VirtplanError(
            "virtplan:stateDir is no longer used: virtplan keeps its records on the hosts, where every machine "
            "sees them; remove it with `pulumi config rm virtplan:stateDir`"
        )
    path = Path(program)
    return Settings(
        program=path if path.is_absolute() else project_dir / path,
        backend=backend,
        hosts=hosts,
        parallelism=parallelism,
    )
