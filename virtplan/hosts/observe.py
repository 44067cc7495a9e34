"""Read the actual state of libvirt hosts. Read-only: nothing here changes a host.

Each host is read in bulk: one list call per object kind (plus list calls filtered by
"active" and "autostart" instead of one call per object), one inactive XML per object
of interest. Domains are fully parsed only if the stack declares their name or they
carry this stack's mark, so a host with thousands of foreign VMs stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from virtplan.documents.capabilities import HostFacts, parse_capabilities
from virtplan.documents.parse import Owner, owner_of, parse_domain, parse_network, parse_pool, parse_volume
from virtplan.documents.render import NAMESPACE
from virtplan.documents.specs import GraphicsSpec, Spec, VMSpec, generic
from virtplan.hosts.fetch import (
    GONE,
    DomainListing,
    domain_xml_flags,
    fetch_all,
    inactive_xml,
    list_domains,
    list_volumes,
    pool_active,
    xml_key,
)
from virtplan.hosts.speccache import SpecCache

if TYPE_CHECKING:
    from virtplan.hosts.fetch import Volumes
    from virtplan.hosts.readahead import ReadAhead


@dataclass
class ObservedObject:
    """One libvirt object as found: its comparable spec, runtime state and owner mark."""

    kind: str
    key: str  # name; "pool/volume" for volumes
    uuid: str | None
    xml: str
    spec: Spec  # a `virtplan.documents.specs` spec of `kind`, runtime fields included
    owner: Owner | None = None
    #: Why the definition could not be read (it does not parse), naming the element; the
    #: spec then holds the runtime fields only.
    problem: str | None = None
    #: The model field the problem is in ("graphics", "description", ...; "definition" if unknown).
    problem_field: str = "definition"

    @property
    def fingerprint(self) -> str:
        """Changes whenever the object's definition or runtime state changes."""
        blob = self.xml + json.dumps(self.spec, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class HostState:
    """Everything observed on one host."""

    name: str
    uri: str
    facts: HostFacts
    objects: dict[tuple[str, str], ObservedObject] = field(default_factory=dict)
    #: the host's network interfaces (bridges among them), read when the stack needs a host
    #: bridge; None: not read, or the host does not tell (no interface driver)
    interfaces: set[str] | None = None
    #: domains this stack neither declares nor owns: name -> inactive XML (not parsed)
    foreign: dict[str, str] = field(default_factory=dict)

    def get(self, kind: str, key: str) -> ObservedObject | None:
        return self.objects.get((kind, key))

    def of_kind(self, kind: str) -> list[ObservedObject]:
        return [o for (k, _), o in self.objects.items() if k == kind]


def observe_host(
    conn: Any,
    name: str,
    uri: str,
    wanted: dict[str, set[str]],
    stack_name: str,
    facts: HostFacts | None = None,
    cache: SpecCache | None = None,
    hidden_pools: frozenset[str] = frozenset(),
    secret_digest: Callable[[str], str] | None = None,
    ahead: ReadAhead | None = None,
) -> HostState:
    """Read one host. `wanted` maps kind -> keys the stack declares or recorded; `cache`
    remembers parsed domain specs by XML hash; `hidden_pools` (virtplan's records pool) are
    not part of any stack's view. With `secret_digest`, a domain's console password is read
    from libvirt (the secure XML) and kept only as that digest, so a password changed
    outside virtplan is seen; the password itself is removed from the XML kept. `ahead`:
    the domains and volumes already being read on this connection (used once, if it
    read them the same way; otherwise they are read now)."""
    import libvirt

    state = HostState(name, uri, facts or parse_capabilities(conn.getCapabilities()))
    xml_flags = domain_xml_flags(secure=secret_digest is not None)
    listing = ahead.domains(xml_flags) if ahead is not None else None
    if listing is None:
        listing = list_domains(conn, xml_flags)
    # networks and pools first, on this connection, while a reader process may still be
    # sending the domains; they join the state after the domains, in the usual order
    others = HostState(name, uri, state.facts)
    _read_networks(conn, libvirt, others)
    pools = _read_pools(conn, libvirt, others, hidden_pools)
    running_nics = _read_domains(listing, state, wanted.get("vm", set()), stack_name, cache, secret_digest)
    state.objects.update(others.objects)
    _read_links(conn, libvirt, state, running_nics)
    if wanted.get("bridge"):
        state.interfaces = _interfaces(conn, libvirt)
    pool_names = {k.split("/", 1)[0] for k in wanted.get("volume", set())} | wanted.get("pool", set())
    for pool_name in pool_names:
        pool = pools.get(pool_name)
        if pool is not None and pool_active(pool):
            volumes = ahead.volumes(pool_name) if ahead is not None else None
            _read_volumes(volumes if volumes is not None else list_volumes(pool), pool_name, state, cache)
    _disks_as_pool_volumes(state)
    return state


def _disks_as_pool_volumes(state: HostState) -> None:
    """A disk given as a file inside a dir pool's folder is that pool's volume ("pool/name"),
    however the domain XML names it (hand-made domains usually give a file path)."""
    folders = {str(o.spec.get("path") or "").rstrip("/"): o.key for o in state.of_kind("pool")}
    folders.pop("", None)
    if not folders:
        return
    for vm in state.of_kind("vm"):
        for disk in vm.spec.get("disks", []):
            volume = disk.get("volume")
            if isinstance(volume, str) and volume.startswith("/"):
                folder, _, name = volume.rpartition("/")
                if folder in folders:
                    disk["volume"] = f"{folders[folder]}/{name}"


def _written_as_is(name: str) -> bool:
    """Whether `name` appears unchanged in libvirt's XML (nothing in it is escaped)."""
    return name.isascii() and name.isprintable() and not set("&<>\"'").intersection(name)


def _mine(xml: str, stack_name: str) -> bool:
    """Whether a domain carries this stack's owner mark, decided on parsed XML. Cheap for
    foreign domains: without virtplan's namespace (or, for a plain stack name, without that
    name) they are not parsed at all, and otherwise only their <metadata> element is (the
    whole document if it cannot be parsed alone)."""
    if NAMESPACE not in xml:
        return False
    if _written_as_is(stack_name) and stack_name not in xml:
        return False
    owner = _metadata_owner(xml)  # libvirt writes the namespace on <metadata> itself
    if owner is None:
        try:
            owner = owner_of(ET.fromstring(xml))
        except ET.ParseError:
            return False  # no readable mark
    return owner is not None and owner.stack == stack_name


_PASSWD = re.compile(r"""\s(passwd)=(['"])([^'"]*)\2""")


def strip_passwords(xml: str) -> tuple[str, str | None]:
    """The XML without its console password attribute, and that password (unescaped), if any.
    libvirt writes attribute values escaped, so a quote never occurs inside one."""
    if "passwd=" not in xml:  # most domains: no need to scan with the expression
        return xml, None
    found: list[str] = []

    def drop(m: re.Match[str]) -> str:
        found.append(_unescape(m.group(3)))
        return ""

    return _PASSWD.sub(drop, xml), (found[0] if found else None)


#: libvirt element -> the model field it holds, to name where a definition is broken.
_FIELDS = {"graphics": "graphics", "listen": "graphics", "description": "description", "title": "description",
           "cmdline": "cmdline", "kernel": "kernel", "initrd": "initrd", "disk": "disks", "source": "disks",
           "interface": "nics", "mac": "nics", "name": "name", "type": "machine", "domain": "domain",
           "ip": "cidr", "range": "dhcp_range", "host": "reservations", "bridge": "bridge", "path": "path"}  # fmt: skip


def unreadable(xml: str, exc: ET.ParseError) -> tuple[str, str]:
    """(field, message) for a definition libvirt returned that does not parse: the element
    the error is in, and the offending line (control characters escaped)."""
    line_no, _col = getattr(exc, "position", (0, 0))
    lines = xml.splitlines()
    line = lines[line_no - 1] if 0 < line_no <= len(lines) else ""
    tags = re.findall(r"<([A-Za-z][\w:-]*)", line)  # the line's own element comes first (a value may hold "<x")
    tag = next((t for t in tags if t in _FIELDS), tags[0] if tags else "")
    field = _FIELDS.get(tag, "definition")
    shown = line.strip()[:160].encode("unicode_escape").decode()
    where = f"in its <{tag}> element" if tag else f"at line {line_no}"
    return field, f"libvirt returned a definition that does not parse ({exc}) {where}: {shown}"


def _metadata_owner(xml: str) -> Owner | None:
    """The owner mark of a definition that does not parse as a whole, from its <metadata> alone."""
    start = re.search(r"<metadata[\s>/]", xml)
    end = xml.find("</metadata>")
    if start is None or not start.start() < end:
        return None
    try:
        return owner_of(ET.fromstring("<domain>" + xml[start.start() : end + len("</metadata>")] + "</domain>"))
    except ET.ParseError:
        return None


def _read_domains(
    listing: DomainListing,
    state: HostState,
    wanted: set[str],
    stack_name: str,
    cache: SpecCache | None,
    secret_digest: Callable[[str], str] | None = None,
) -> Counter[str]:
    """Read the domains of interest into `state`; returns how many NICs of running domains
    (all of them, foreign ones too) each libvirt network should have ports for."""
    active, autostart = listing.active, listing.autostart
    running_nics: Counter[str] = Counter()
    for name, uuid, xml, key in listing.xmls:
        if xml is None:
            continue
        if uuid in active:
            running_nics.update(_unescape(n) for n in _NETWORK_SOURCE.findall(xml))
        xml, password = strip_passwords(xml) if secret_digest else (xml, None)
        if name not in wanted and not _mine(xml, stack_name):
            state.foreign[name] = xml  # none of this stack's business, unless it uses what the stack deletes
            continue
        key = key or xml_key(xml)  # (none was worked out for a document with a password)
        hit = cache.get(key) if cache is not None else None
        spec: VMSpec
        if hit is not None:
            spec, owner = hit
        else:
            try:
                root = ET.fromstring(xml)
            except ET.ParseError as exc:  # libvirt stored something it cannot give back as XML
                field, problem = unreadable(xml, exc)
                runtime = {"state": "running" if uuid in active else "stopped", "autostart": uuid in autostart}
                state.objects[("vm", name)] = ObservedObject(
                    "vm", name, uuid, xml, runtime, _metadata_owner(xml), problem, field
                )
                continue
            spec, owner = parse_domain(root), owner_of(root)
            if cache is not None:
                cache.put(key, spec, owner)  # a copy: the runtime fields below are not cached
        graphics = spec.get("graphics")
        if secret_digest is not None and graphics is not None:
            digest = secret_digest(password) if password is not None else None
            spec["graphics"] = GraphicsSpec(type=graphics["type"], listen=graphics["listen"], password=digest)
        spec["state"] = "running" if uuid in active else "stopped"
        spec["autostart"] = uuid in autostart
        spec["unplugged"] = []
        state.objects[("vm", name)] = ObservedObject("vm", name, uuid, xml, generic(spec), owner)
    return running_nics


def _unescape(text: str) -> str:
    """XML text as written (entities replaced); `html` is imported only when there are any."""
    if "&" not in text:
        return text
    import html

    return html.unescape(text)


#: How libvirt writes a NIC's network in a domain's XML (and nowhere else).
_NETWORK_SOURCE = re.compile(r"<source network='([^']*)'")


def _read_links(conn: Any, libvirt: Any, state: HostState, running_nics: Counter[str]) -> None:
    """Which NICs of the running VMs read are not on their network's bridge (`unplugged`):
    the network was stopped, restarted or replaced under them (libvirt deletes a network's
    ports when it stops, and does not plug the taps back when it starts again), or the NIC
    is on another network or bridge than its definition says.

    Cheap when all is well: one list of ports per active network those VMs use, compared
    with the number of running NICs on it. Only where they differ are those VMs' live
    definitions read, to find which NICs are off (by the port each one holds)."""
    vms = [o for o in state.of_kind("vm") if o.spec.get("state") == "running"]
    used = {n["network"] for o in vms for n in o.spec.get("nics", []) if n.get("network")}
    if not used:
        return
    ports: dict[str, set[str] | None] = {}
    for name in used:
        net = state.get("network", name)
        if net is None or not net.spec.get("active"):
            ports[name] = None  # no bridge to be on
            continue
        try:
            ports[name] = {p.UUIDString() for p in conn.networkLookupByName(name).listAllPorts()}
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, *GONE):
                continue  # no ports API (or gone meanwhile): not judged
            raise
    suspect = {n for n in ports if ports[n] is None or len(ports[n] or ()) != running_nics[n]}
    check = [o for o in vms if any(n.get("network") in suspect for n in o.spec.get("nics", []))]
    lives = fetch_all([conn.lookupByName(o.key) for o in check], lambda d: _live_xml(d))
    for obj, live in zip(check, lives, strict=True):
        if live is not None:
            obj.spec["unplugged"] = unplugged_nics(obj.spec.get("nics", []), live, ports, state)


def _interfaces(conn: Any, libvirt: Any) -> set[str] | None:
    """The names of the host's network interfaces (libvirt's interface driver), or None."""
    try:
        return {i.name() for i in conn.listAllInterfaces()}
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_INVALID):
            return None
        raise


def _live_xml(dom: Any) -> str | None:
    import libvirt

    try:
        return str(dom.XMLDesc(0))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in GONE:
            return None
        raise


def unplugged_nics(nics: list[Any], live_xml: str, ports: dict[str, set[str] | None], state: HostState) -> list[str]:
    """The MACs of a running domain's NICs (as defined) that are not plugged into their
    network as libvirt has it now: no port of the network (stopped, restarted, replaced),
    another network or bridge, or a plain bridge NIC instead."""
    live: dict[str, ET.Element] = {}
    for iface in ET.fromstring(live_xml).iterfind("devices/interface"):
        mac = iface.find("mac")
        if mac is not None:
            live[mac.get("address", "").lower()] = iface
    out = []
    for nic in nics:
        network, found = nic.get("network"), live.get(nic.get("mac") or "")
        if not network or found is None or network not in ports:
            continue  # a host bridge NIC, a NIC not plugged live at all, or a network not judged
        iface = found
        source = iface.find("source")
        net = state.get("network", network)
        bridge = net.spec.get("bridge") if net is not None else None
        held, known = source.get("portid") if source is not None else None, ports[network]
        if (
            iface.get("type") != "network"
            or source is None
            or source.get("network") != network
            or known is None
            or held not in known
            or (bridge is not None and source.get("bridge") not in (None, bridge))
        ):
            out.append(nic["mac"])
    return sorted(out)


def _read_networks(conn: Any, libvirt: Any, state: HostState) -> None:
    active = {n.UUIDString() for n in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE)}
    autostart = {n.UUIDString() for n in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_AUTOSTART)}
    for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_PERSISTENT):
        xml = inactive_xml(net, libvirt.VIR_NETWORK_XML_INACTIVE)
        if xml is None:
            continue
        uuid = net.UUIDString()
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            field, problem = unreadable(xml, exc)
            runtime = {"active": uuid in active, "autostart": uuid in autostart}
            obj = ObservedObject("network", net.name(), uuid, xml, runtime, _metadata_owner(xml), problem, field)
            state.objects[("network", net.name())] = obj
            continue
        spec = parse_network(root)
        spec["active"] = uuid in active
        spec["autostart"] = uuid in autostart
        obj = ObservedObject("network", net.name(), uuid, xml, generic(spec), owner_of(root))
        state.objects[("network", net.name())] = obj


def _read_pools(conn: Any, libvirt: Any, state: HostState, hidden: frozenset[str]) -> dict[str, Any]:
    active = {p.UUIDString() for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)}
    autostart = {p.UUIDString() for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_AUTOSTART)}
    pools = {}
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT):
        if pool.name() in hidden:
            continue
        xml = inactive_xml(pool, libvirt.VIR_STORAGE_XML_INACTIVE)
        if xml is None:
            continue
        uuid = pool.UUIDString()
        spec = parse_pool(ET.fromstring(xml))
        spec["active"] = uuid in active
        spec["autostart"] = uuid in autostart
        pools[pool.name()] = pool
        state.objects[("pool", pool.name())] = ObservedObject("pool", pool.name(), uuid, xml, generic(spec))
    return pools


def _read_volumes(volumes: Volumes, pool_name: str, state: HostState, cache: SpecCache | None = None) -> None:
    """A pool's volumes from one list call and one XML per volume (`list_volumes`); a
    volume's identity, its path, is read from that XML (`target/path`, the field
    virStorageVolGetPath returns) rather than with one more call per volume. `cache`
    remembers the spec and path of each XML."""
    for vol_name, xml, key in volumes:
        if xml is None:
            continue
        key = key or xml_key(xml)
        hit = cache.volume(key) if cache is not None else None
        if hit is not None:
            spec, path = hit
        else:
            root = ET.fromstring(xml)
            path = root.findtext("target/path") or ""
            spec = generic(parse_volume(root))
            if cache is not None:
                cache.put_volume(key, spec, path)
        name = f"{pool_name}/{vol_name}"
        state.objects[("volume", name)] = ObservedObject("volume", name, path, xml, spec)


def dhcp_leases(conn: Any, network_names: Iterable[str]) -> dict[str, str]:
    """MAC -> IPv4 address from the DHCP leases of the given networks (newest wins)."""
    leases: dict[str, tuple[int, str]] = {}
    for name in network_names:
        try:
            net = conn.networkLookupByName(name)
            if not net.isActive():
                continue
            for lease in net.DHCPLeases():
                mac = (lease.get("mac") or "").lower()
                expiry = int(lease.get("expirytime") or 0)
                if lease.get("ipaddr") and (mac not in leases or leases[mac][0] < expiry):
                    leases[mac] = (expiry, lease["ipaddr"])
        except Exception:
            continue
    return {mac: ip for mac, (_, ip) in leases.items()}
