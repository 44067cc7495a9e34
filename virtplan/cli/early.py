"""Hosts a command will read, connected before the stack program has run.

A command that reads every host first imports virtplan and runs the stack program (a
tenth of a second for a thousand VMs), and only then knows which hosts to connect to
(a few hundred milliseconds each over ssh) and what to read there. Both can overlap: the
hosts and pools that the last valid run of the same stack file needed are kept in the
cache folder, and the next such command starts connecting to them, and reading them
ahead, while it imports and runs the program (a local host, for a command that changes
nothing, by a child forked first of all: `virtplan.hosts.reader`).

Only when the file's bytes are those that validated then, with the same VIRTPLAN_URI and
no --host option, so an edited stack contacts no host before it is valid (a module it
imports may still have changed: at worst, a host it named before is connected and read
to no use). Once the stack is loaded, whatever was opened is checked against it (host
name and URI) and closed if it is not its. Deleting the cache only makes the next
command slower.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os

from virtplan.cache import cache_folder, write_atomically

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing before the hosts are dialled
if TYPE_CHECKING:
    from typing import Any

    from virtplan.hosts.connection import Opening
    from virtplan.hosts.dialing import Dial
    from virtplan.hosts.readahead import ReadAhead
    from virtplan.hosts.reader import ReaderProcess
    from virtplan.model.stack import Stack

#: Commands that read every host of the stack named by their first argument.
READERS = frozenset({"plan", "apply", "show", "drift"})
#: Those of them that change nothing: what they read ahead is what they use.
CHANGE_NOTHING = frozenset({"plan", "show", "drift"})
URI_ENV = "VIRTPLAN_URI"

_dials: dict[str, Dial] = {}


def start(argv: list[str]) -> None:
    """From the command line (before it is parsed): start opening the hosts the last valid
    run of this stack file read, if this command reads hosts and the file is unchanged.
    Only the standard library and libvirt are imported before the attempts start."""
    file = _stack_file(argv)
    if file is None:
        return
    try:
        with open(_hint_path(file), encoding="utf-8") as f:
            hint = json.load(f)
        with open(file, "rb") as f:
            if hint["sha256"] != hashlib.sha256(f.read()).hexdigest():
                return  # edited since it last validated
        if hint["uri_env"] != os.environ.get(URI_ENV):
            return
        hosts = {str(name): (str(uri), [str(p) for p in pools]) for name, uri, pools in hint["hosts"]}
    except (OSError, ValueError, TypeError, KeyError):
        return
    readers: dict[str, ReaderProcess] = {}
    if argv[0] in CHANGE_NOTHING:  # (a command that changes hosts reads them again under its lock)
        from virtplan.hosts.reader import fork_readers

        readers = fork_readers(hosts, secure=True)  # before any thread starts
    from virtplan.hosts.dialing import Dial, quiet_libvirt

    quiet_libvirt()
    for name, (uri, pools) in hosts.items():
        # as soon as it is connected, read what the last valid run read there (its domains
        # and the volumes of `pools`; by a reader process if there is one); `opening` keeps
        # these reads if the stack still names the same pools on that host
        _dials[name] = Dial(uri, then=functools.partial(_read_ahead, pools=pools, child=readers.get(name)))


def _read_ahead(conn: Any, pools: list[str], child: ReaderProcess | None) -> ReadAhead:
    from virtplan.hosts.readahead import as_observed

    return as_observed(conn, pools, child)


def opening(stack: Stack, remember: bool = True) -> Opening:
    """The connections to `stack`'s hosts, opening since start-up or from now on; with
    `remember`, the hosts and pools are kept for the next command on the same file."""
    from virtplan.hosts.connection import Opening

    hosts = [(h.name, h.uri) for h in stack.hosts]
    pools = pools_to_read(stack)
    dials = dict(_dials)
    _dials.clear()
    ledgers = {h.name: (h.records_pool, h.records_path, stack.key) for h in stack.hosts}
    result = Opening()
    result.add(hosts, pools, dials, ledgers)  # each attempt for the host's URI is taken over, the others abandoned
    if remember and stack.path is not None:
        _remember(stack, [[name, uri, pools.get(name, [])] for name, uri in hosts])
    return result


def forget() -> None:
    """Abandon what `start` began (the command did not need it after all)."""
    dials = list(_dials.values())
    _dials.clear()
    for dial in dials:
        dial.abandon()


def pools_to_read(stack: Stack) -> dict[str, list[str]]:
    """Host name -> the pools whose volumes the stack declares, or which it declares."""
    pools: dict[str, set[str]] = {}
    for r in stack.managed():
        if r.host is not None and r.kind in ("pool", "volume"):
            pools.setdefault(r.host.name, set()).add(r.key.split("/", 1)[0])
    return {name: sorted(names) for name, names in pools.items()}


def _stack_file(argv: list[str]) -> str | None:
    if not argv or argv[0] not in READERS:
        return None
    if any(a == "--host" or a.startswith("--host=") for a in argv):
        return None  # another URI than remembered may be meant
    if {"-h", "--help"} & set(argv):
        return None  # help reads no host
    name = next((a for a in argv[1:] if a.endswith(".py") and not a.startswith("-")), None)
    if name is None:
        return None
    file = os.path.realpath(name)
    return file if os.path.isfile(file) else None


def _hint_path(file: str | os.PathLike[str]) -> str:
    return os.path.join(cache_folder(), "hosts", f"{hashlib.sha256(str(file).encode()).hexdigest()[:24]}.json")


def _remember(stack: Stack, hosts: list[list[Any]]) -> None:
    assert stack.path is not None
    hint = {"file": str(stack.path), "sha256": stack.source_hash, "uri_env": os.environ.get(URI_ENV), "hosts": hosts}
    path = _hint_path(stack.path)
    with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
        if json.load(f) == hint:
            return
    with contextlib.suppress(OSError):  # the cache is disposable: never fail on it
        write_atomically(path, json.dumps(hint).encode())
