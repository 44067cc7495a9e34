"""What `virtplan clone` is asked for, what it reports, and the checks of the request.

`check_options` runs before anything else: a request it lets through names a free clone
name, hosts of the source stack and subnets of its networks, so nothing is frozen or
created for a clone that cannot be made.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.errors import VirtplanError

if TYPE_CHECKING:
    from virtplan.model import Stack


class CloneError(VirtplanError):
    """The environment cannot be cloned as asked; nothing was created."""


@dataclass
class CloneOptions:
    """What `virtplan clone` was asked for."""

    name: str
    subnet_map: dict[str, str] = field(default_factory=dict)
    host_map: dict[str, str] = field(default_factory=dict)
    full: bool = False
    from_snapshot: str | None = None
    connected: bool = False
    state: str | None = None  # every clone VM "running" or "stopped"; None keeps the source's
    out: Path | None = None


@dataclass
class CloneResult:
    name: str
    stack_file: Path
    vms: dict[str, str]  # source VM name -> clone VM name
    networks: dict[str, tuple[str, str | None]]  # source network address -> (clone name, cidr)
    frozen: dict[str, str]  # "<vm>/<target>" -> frozen source file the clone builds on
    mode: str  # linked | full
    seconds: float = 0.0


def check_options(src: Stack, opts: CloneOptions) -> None:
    """Raise CloneError, saying how to fix it, if `opts` cannot clone `src`."""
    from virtplan.model.validate import MAX_NAME

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opts.name or ""):
        raise CloneError(f"--name {opts.name!r}: use letters, digits, '.', '-', '_' (it prefixes every name)")
    if opts.name == src.name:
        raise CloneError(f"--name {opts.name!r} is the source stack's own name; pick another")
    longest = max((len(r.name) for r in src.managed()), default=0)
    if len(opts.name) + 1 + longest > MAX_NAME:
        raise CloneError(f"--name {opts.name!r} is too long: names would exceed {MAX_NAME} characters")
    hosts = {h.name for h in src.hosts}
    for a, b in opts.host_map.items():
        if a not in hosts or b not in hosts:
            known = ", ".join(sorted(hosts))
            raise CloneError(f"--host-map {a}={b}: both must be hosts of stack {src.name!r} ({known})")
    cidrs = {str(n.ip_network) for n in src.networks if n.cidr}
    for old, new in opts.subnet_map.items():
        try:
            o, n = ipaddress.IPv4Network(old), ipaddress.IPv4Network(new)
        except ValueError as exc:
            raise CloneError(f"--subnet-map {old}={new}: {exc}; write e.g. 10.20.0.0/24=10.99.0.0/24") from exc
        if str(o) not in cidrs:
            raise CloneError(f"--subnet-map {old}: no network of stack {src.name!r} has that subnet "
                             f"(it has {', '.join(sorted(cidrs)) or 'none'})")  # fmt: skip
        if n.prefixlen > o.prefixlen:
            raise CloneError(f"--subnet-map {old}={new}: the new subnet is smaller; give one at least as big")
    if opts.state not in (None, "running", "stopped"):
        raise CloneError(f"state {opts.state!r}: use running or stopped")
