"""Renaming a stack: its objects keep everything (UUIDs, MACs, disks); only their owner changes.

A stack's identity (project/name) is written into the marks of its domains and networks
and names its records on each host. `virtplan stack rename` moves all of that to the new
identity under both identities' locks, then declares the new name in the stack program
(`name_stack(...)`), so the next plan of the same file sees its own objects, unchanged.
Nothing is re-created; a crash halfway leaves each object provably owned by one of the
two identities, and running the command again finishes the move.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from virtplan.errors import VirtplanError
from virtplan.model import Stack, load_stack
from virtplan.model.identity import check_identity_part


class RenameError(VirtplanError):
    """The stack cannot be renamed as asked."""


@dataclass
class RenamePlan:
    """What a rename changes, host by host."""

    old: str
    new: str
    marks: dict[str, list[str]] = field(default_factory=dict)  # host -> addresses of domains/networks
    records: dict[str, int] = field(default_factory=dict)  # host -> records moved


def rename_stack(
    stack_file: Path,
    new_name: str,
    new_project: str | None = None,
    host_uris: dict[str, str] | None = None,
    confirm: Any = None,
) -> RenamePlan:
    """Move the deployed stack of `stack_file` to the identity `new_project/new_name` and
    declare it in the file. `confirm(plan)` is called before anything changes (it may raise
    to stop)."""
    from virtplan.engine import Engine
    from virtplan.plan.ownership import mark_key, owned_objects

    check_identity_part(new_name, "the new stack name")
    stack = load_stack(stack_file, host_uris)
    project = stack.project if new_project is None else check_identity_part(new_project, "the new project")
    target = Stack(new_name, stack.path, project)
    target.resources = stack.resources
    if target.key == stack.key:
        raise RenameError(f"stack {stack.key!r} already has that name")
    with ExitStack() as stack_ctx:
        engine = stack_ctx.enter_context(Engine(stack))
        other = stack_ctx.enter_context(Engine(target))
        stack_ctx.enter_context(engine.locked())
        stack_ctx.enter_context(other.locked())
        observation = engine.observe()
        plan = RenamePlan(stack.key, target.key)
        taken = [
            (host, o.key) for host in observation.hosts.values() for o in host.objects.values()
            if o.owner is not None and mark_key(o.owner) == target.key
        ]  # fmt: skip
        if taken or any(other.host_records.records(h.uri) for h in stack.hosts):
            raise RenameError(f"stack {target.key!r} already owns objects on these hosts; pick another name")
        moves: list[tuple[Any, list[Any]]] = []
        for host in observation.hosts.values():
            owned = owned_objects(host, engine.store, stack.key)
            marked = [o for o in owned if o.kind in ("vm", "network")]
            plan.marks[host.name] = [f"{host.name}/{o.kind}/{o.key}" for o in marked]
            plan.records[host.name] = len(engine.store.records(host.uri))
            moves.append((host, marked))
        if confirm is not None:
            confirm(plan)
        for host, marked in moves:
            conn = engine.connection(host.name)
            for obj in marked:
                _remark(conn, obj, target)
            records = engine.store.records(host.uri)
            if records:
                other.host_records.put_many(host.uri, records)
            engine.host_records.ledger(host.uri).drop()
    _declare_name(stack_file, new_name, new_project)
    return plan


def _remark(conn: Any, obj: Any, target: Stack) -> None:
    """Give a domain or network the mark of `target`, keeping every other attribute."""
    import libvirt

    from virtplan.documents.fragments import owner_attrs, owner_mark, with_owner
    from virtplan.documents.parse import owner_of
    from virtplan.documents.render import NAMESPACE

    if obj.kind == "vm":
        dom = conn.lookupByName(obj.key)
        owner = owner_of(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
        extra = {k: v for k, v in (owner.attrs if owner else {}).items() if k not in ("stack", "project", "address")}
        mark = owner_mark(owner_attrs(target.name, target.project, obj.owner.address, **extra))
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "virtplan", NAMESPACE, flags)
    else:
        net = conn.networkLookupByName(obj.key)
        xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
        conn.networkDefineXML(with_owner(xml, owner_attrs(target.name, target.project, obj.owner.address)))


_CALL = re.compile(r"^(?P<indent>[ \t]*)name_stack\((?P<args>[^)\n]*)\)[ \t]*$", re.M)


def _declare_name(path: Path, name: str, project: str | None) -> None:
    """Write `name_stack(name[, project=...])` into the program: replace its call, or add one
    after its last top-level import."""
    import ast

    args = repr(name) + (f", project={project!r}" if project is not None else "")
    text = path.read_text()
    if _CALL.search(text):
        text = _CALL.sub(lambda m: f"{m['indent']}name_stack({args})", text, count=1)
    else:
        imports = [n for n in ast.parse(text).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        lines = text.splitlines(keepends=True)
        at = (imports[-1].end_lineno or 0) if imports else 0
        lines.insert(at, f"from virtplan import name_stack\n\nname_stack({args})\n")
        text = "".join(lines)
    path.write_text(text)
