"""The round trips of reading a host: list calls, then one XML call per object.

Only threading and libvirt are imported here: the command line starts these reads as soon
as a host's connection opens, before it imports the rest of virtplan
(`virtplan.cli.early`, `virtplan.hosts.readahead`); `virtplan.hosts.observe` makes specs
of what they return.
"""

from __future__ import annotations

import hashlib
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the reads start
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, TypeVar

    T = TypeVar("T")
    #: A pool's volumes: (name, XML or None if deleted while being read, its `keyed` key);
    #: iterated once (a reader process may still be sending them, see `virtplan.hosts.reader`).
    Volumes = Iterable[tuple[str, str | None, str | None]]

#: libvirt's "no such domain / network / storage pool / storage volume": deleted meanwhile.
GONE = (42, 43, 49, 50)
FETCH_THREADS = 8


def again_if_lost(call: Callable[[], T]) -> T:
    """call(), made once more if libvirt failed it without saying why.

    libvirt-python reads a failed call's error from the thread's last error once the call
    has returned; freeing any libvirt object in between (the garbage collector may, in that
    very thread) resets it, and the error arrives without a code or message. A lookup or a
    delete whose "no such object" is expected would then fail instead of being recognised,
    so such idempotent calls are made again: the second answer says what really happened."""
    import libvirt

    try:
        return call()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() is not None:
            raise
    return call()


_SEQUENTIAL_BELOW = 32
_CHUNK = 16


def fetch_all(
    objects: list[Any], fetch: Callable[[Any], T], done: Callable[[int, list[T]], None] | None = None
) -> list[T]:
    """fetch(obj) for every object, in order; the first exception raised is raised. Many
    objects are fetched over a few concurrent calls on the same connection (libvirt
    multiplexes calls on one connection and libvirtd serves them from a worker pool),
    which beats one-by-one round trips. `done(start, results)` is told each run of
    consecutive results as soon as it is fetched (from the fetching thread)."""
    if len(objects) < _SEQUENTIAL_BELOW:
        found = [fetch(o) for o in objects]
        if done is not None:
            done(0, found)
        return found
    results: list[Any] = [None] * len(objects)
    starts = iter(range(0, len(objects), _CHUNK))
    lock = threading.Lock()
    failures: list[BaseException] = []

    def work() -> None:
        while True:
            with lock:
                start = None if failures else next(starts, None)
            if start is None:
                return
            try:
                end = min(start + _CHUNK, len(objects))
                for i in range(start, end):
                    results[i] = fetch(objects[i])
                if done is not None:
                    done(start, results[start:end])
            except BaseException as exc:  # raised by the caller's thread, below
                with lock:
                    failures.append(exc)
                return

    threads = [threading.Thread(target=work, name="fetch", daemon=True) for _ in range(FETCH_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return results


def xml_key(xml: str) -> str:
    """The spec cache's key of a document (`virtplan.hosts.speccache`): a digest of exactly its text."""
    return hashlib.sha1(xml.encode(), usedforsecurity=False).hexdigest()


def keyed(xml: str | None) -> str | None:
    """`xml_key(xml)`, worked out where the document is fetched (by the fetching threads or
    process, not the main thread); None for a document holding a console password, which
    observe removes first and never digests."""
    return None if xml is None or "passwd=" in xml else xml_key(xml)


class DomainListing:
    """A host's persistent domains as (name, UUID, XML (None: deleted while being read),
    its `keyed` key), iterated once, and the UUIDs of those running and those started at
    boot. Plain values: no libvirt object, so it can come from another process, still
    sending the XML while it is iterated (`virtplan.hosts.reader`)."""

    __slots__ = ("active", "autostart", "xmls")

    def __init__(self, active: set[str], autostart: set[str], xmls: Iterable[tuple[str, str, str | None, str | None]]):
        self.active, self.autostart, self.xmls = active, autostart, xmls


def domain_xml_flags(secure: bool) -> int:
    """How domains' XML is read: their persistent definition, with the console password
    when `secure` (to be digested, then dropped; see `virtplan.hosts.observe`)."""
    import libvirt

    return int(libvirt.VIR_DOMAIN_XML_INACTIVE | (libvirt.VIR_DOMAIN_XML_SECURE if secure else 0))


def inactive_xml(obj: Any, flags: int) -> str | None:
    """The persistent definition, or None if the object was deleted since it was listed.
    Drivers that lack the inactive flag give their only definition."""
    import libvirt

    try:
        return str(again_if_lost(lambda: obj.XMLDesc(flags)))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in GONE:
            return None
        if exc.get_error_code() not in (libvirt.VIR_ERR_INVALID_ARG, libvirt.VIR_ERR_NO_SUPPORT):
            raise
        return str(obj.XMLDesc(0))


def pool_active(pool: Any) -> bool:
    """Whether a pool listed a moment ago is running; not if it was deleted since (Pulumi
    deletes in parallel, each delete observing the host first)."""
    import libvirt

    try:
        return bool(again_if_lost(pool.isActive))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in GONE:
            return False
        raise


def domain_lists(conn: Any) -> tuple[set[str], set[str], list[Any]]:
    """The UUIDs of the running domains, of those started at boot, and the persistent
    domains (libvirt objects): three list calls."""
    import libvirt

    active = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
    autostart = {d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_AUTOSTART)}
    return active, autostart, conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)


def list_domains(conn: Any, xml_flags: int, fetch: Callable[[Any], str | None] | None = None) -> DomainListing:
    """A host's domains: three lists and one XML each (`fetch` replaces the XML call, e.g.
    to stop early)."""
    active, autostart, domains = domain_lists(conn)
    xmls = documents(domains, xml_flags, fetch)
    found = [(d.name(), d.UUIDString(), *x) for d, x in zip(domains, xmls, strict=True)]
    return DomainListing(active, autostart, found)


def pool_volumes(pool: Any) -> list[Any]:
    """A pool's volumes (libvirt objects): one list call; none if the pool stopped or went
    away since it was listed (Pulumi deletes in parallel)."""
    import libvirt

    try:
        return list(again_if_lost(pool.listAllVolumes))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (*GONE, libvirt.VIR_ERR_OPERATION_INVALID):
            return []
        raise


def list_volumes(
    pool: Any, fetch: Callable[[Any], str | None] | None = None
) -> list[tuple[str, str | None, str | None]]:
    """A pool's volumes as (name, XML, its `keyed` key): one list and one XML each (None:
    deleted while being read); nothing if the pool stopped or went away meanwhile."""
    volumes = pool_volumes(pool)
    xmls = documents(volumes, 0, fetch)
    return [(v.name(), *x) for v, x in zip(volumes, xmls, strict=True)]


def documents(
    objects: list[Any],
    flags: int,
    read: Callable[[Any], str | None] | None = None,
    done: Callable[[int, list[tuple[str | None, str | None]]], None] | None = None,
) -> list[tuple[str | None, str | None]]:
    """(XML, its `keyed` key) of each object, fetched at once (`fetch_all`, which also says
    what `done` is told): its persistent definition read with `flags`, or by `read` (which
    replaces the XML call, e.g. to stop early)."""
    fetch = read or (lambda obj: inactive_xml(obj, flags))
    return fetch_all(objects, lambda obj: with_key(fetch(obj)), done)


def with_key(xml: str | None) -> tuple[str | None, str | None]:
    """A fetched document and its `keyed` key."""
    return xml, keyed(xml)
