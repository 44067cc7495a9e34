"""Moving the records of virtplan 0.1 from an operator's machine to the hosts, once.

virtplan 0.1 kept a stack's records in a local file (`.virtplan/<stack>.json` beside the
stack, or `$VIRTPLAN_STATE_DIR`). The first command that holds the stack's lock (apply,
destroy, ...) moves them into the stack's ledger on each host and re-stamps the marks of
the domains and networks they list with the stack's project; then the file is renamed
`<stack>.json.migrated`. It is idempotent: a record the host already has is kept, a
second run finds nothing to move. Until then, read-only commands read the file too
(`Overlay`), so plans stay right before the first apply of the new version.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.hosts.ledger import Record
from virtplan.hosts.legacy_state import default_state_path

if TYPE_CHECKING:
    from virtplan.hosts.records import Records
    from virtplan.model import Stack


def legacy_file(stack: Stack) -> Path | None:
    """The stack's 0.1 state file, if there is one still to migrate."""
    path = default_state_path(stack.name, stack.path)
    return path if path.is_file() else None


def legacy_records(path: Path) -> dict[str, dict[str, Record]]:
    """uri -> address -> record from a 0.1 state file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    hosts = data.get("hosts") if isinstance(data, dict) else None
    return {str(uri): dict(records) for uri, records in (hosts or {}).items() if isinstance(records, dict)}


class Overlay:
    """The host records, with a 0.1 file's records underneath for addresses the host lacks."""

    def __init__(self, hosts: Records, legacy: dict[str, dict[str, Record]]):
        self.hosts, self.legacy = hosts, legacy

    def records(self, uri: str) -> dict[str, Record]:
        out = {a: dict(r) for a, r in self.legacy.get(uri, {}).items()}
        out.update(self.hosts.records(uri))
        return out

    def view(self, uri: str) -> dict[str, Record]:
        out = dict(self.legacy.get(uri, {}))
        out.update(self.hosts.view(uri))
        return out

    def get(self, uri: str, address: str) -> Record | None:
        found = self.hosts.get(uri, address)
        if found is None and address in self.legacy.get(uri, {}):
            return dict(self.legacy[uri][address])
        return found

    def put(self, uri: str, address: str, **fields: Any) -> None:
        self.hosts.put(uri, address, **fields)

    def put_many(self, uri: str, records: dict[str, Record]) -> None:
        self.hosts.put_many(uri, records)

    def forget(self, uri: str, address: str) -> None:
        self.legacy.get(uri, {}).pop(address, None)
        self.hosts.forget(uri, address)


@dataclass
class Migration:
    """What moving a stack's local records into its hosts' ledgers did."""

    moved: int = 0
    restamped: list[str] = field(default_factory=list)
    left: int = 0  # records for hosts this stack no longer has


def migrate(stack: Stack, path: Path, records: Records, connection: Any) -> Migration:
    """Move the file's records into the hosts' ledgers and re-stamp legacy marks; rename
    the file when everything moved. `connection(host_name)` opens a host."""
    legacy = legacy_records(path)
    result = Migration()
    for host in stack.hosts:
        mine = legacy.pop(host.uri, {})
        if not mine:
            continue
        have = records.records(host.uri)
        todo = {a: r for a, r in mine.items() if a not in have and not r.get("pending")}
        if todo:
            records.put_many(host.uri, todo)
            result.moved += len(todo)
        if stack.project:
            result.restamped += _restamp(stack, host.name, connection(host.name), mine)
    result.left = sum(len(r) for r in legacy.values())
    if result.left == 0:
        path.rename(path.with_name(path.name + ".migrated"))
    else:
        path.write_text(json.dumps({"version": 1, "stack": stack.name, "hosts": legacy}, indent=2))
    return result


def _restamp(stack: Stack, host: str, conn: Any, recorded: dict[str, Record]) -> list[str]:
    """Add the project to the 0.1 marks (stack name only) of the recorded domains and networks."""
    import xml.etree.ElementTree as ET

    import libvirt

    from virtplan.documents.fragments import owner_attrs, owner_mark, with_owner
    from virtplan.documents.parse import owner_of
    from virtplan.documents.render import NAMESPACE

    done = []
    for address in sorted(recorded):
        _, kind, key = address.split("/", 2)
        try:
            if kind == "vm":
                dom = conn.lookupByName(key)
                owner = owner_of(ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)))
                if owner is None or owner.stack != stack.name or "project" in owner.attrs:
                    continue
                extra = {k: v for k, v in owner.attrs.items() if k not in ("stack", "address", "project")}
                mark = owner_mark(owner_attrs(stack.name, stack.project, owner.address, **extra))
                flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
                dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, mark, "virtplan", NAMESPACE, flags)
            elif kind == "network":
                net = conn.networkLookupByName(key)
                xml = net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE)
                owner = owner_of(ET.fromstring(xml))
                if owner is None or owner.stack != stack.name or "project" in owner.attrs:
                    continue
                conn.networkDefineXML(with_owner(xml, owner_attrs(stack.name, stack.project, owner.address)))
            else:
                continue
        except libvirt.libvirtError:
            continue  # gone meanwhile: nothing to stamp
        done.append(address)
    return done
