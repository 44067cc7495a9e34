"""Hosts a command will read, connected before the stack program has run.

A command that reads every host first imports virtplan and runs the stack program (a
tenth of a second for a thousand VMs), and only then knows which hosts to connect to
(a few hundred milliseconds each over ssh) and what to read there. Both can overlap: the
hosts and pools that the last valid run of the same stack file needed are kept in the
cache folder, and the next such command starts connecting to them, and reading them
ahead, while it imports and runs the program.

Only when the file's bytes are those that validated then, with the same VIRTPLAN_URI and
no --host option, so an edited stack contacts no host before it is valid (a module it
imports may still have changed: at worst, a host it named before is connected and read
to no use). Once the stack is loaded, whatever was opened is checked against it (host
name and URI) and closed if it is not its. Deleting the cache only makes the next
command slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from virtplan.hosts.connection import Opening
    from virtplan.model.stack import Stack

#: Commands that read every host of the stack named by their first argument.
READERS = frozenset({"plan", "apply", "show", "drift"})
URI_ENV = "VIRTPLAN_URI"

_started: Opening | None = None


def start(argv: list[str]) -> None:
    """From the command line (before it is parsed): start opening the hosts the last valid
    run of this stack file read, if this command reads hosts and the file is unchanged."""
    global _started
    file = _stack_file(argv)
    if file is None:
        return
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        hint = json.loads(_hint_path(file).read_text())
        if hint["sha256"] != hashlib.sha256(file.read_bytes()).hexdigest():
            return  # edited since it last validated
        if hint["uri_env"] != os.environ.get(URI_ENV):
            return
        hosts = [(str(name), str(uri)) for name, uri, _ in hint["hosts"]]
        pools = {str(name): [str(p) for p in pools] for name, _, pools in hint["hosts"]}
        from virtplan.hosts.connection import Opening

        _started = Opening(hosts, pools)


def opening(stack: Stack, remember: bool = True) -> Opening:
    """The connections to `stack`'s hosts, opening since start-up or from now on; with
    `remember`, the hosts and pools are kept for the next command on the same file."""
    global _started
    from virtplan.hosts.connection import Opening

    hosts = [(h.name, h.uri) for h in stack.hosts]
    pools = pools_to_read(stack)
    started, _started = _started, None
    result = started if started is not None else Opening()
    result.add(hosts, pools)
    if remember and stack.path is not None:
        _remember(stack, [[name, uri, pools.get(name, [])] for name, uri in hosts])
    return result


def forget() -> None:
    """Close what `start` opened (the command did not need it after all)."""
    global _started
    started, _started = _started, None
    if started is not None:
        started.close()


def pools_to_read(stack: Stack) -> dict[str, list[str]]:
    """Host name -> the pools whose volumes the stack declares, or which it declares."""
    pools: dict[str, set[str]] = {}
    for r in stack.managed():
        if r.host is not None and r.kind in ("pool", "volume"):
            pools.setdefault(r.host.name, set()).add(r.key.split("/", 1)[0])
    return {name: sorted(names) for name, names in pools.items()}


def _stack_file(argv: list[str]) -> Path | None:
    if not argv or argv[0] not in READERS:
        return None
    if any(a == "--host" or a.startswith("--host=") for a in argv):
        return None  # another URI than remembered may be meant
    name = next((a for a in argv[1:] if a.endswith(".py") and not a.startswith("-")), None)
    if name is None:
        return None
    file = Path(name).resolve()
    return file if file.is_file() else None


def _hint_path(file: Path) -> Path:
    from virtplan.hosts.cache import cache_dir

    return cache_dir() / "hosts" / f"{hashlib.sha256(str(file).encode()).hexdigest()[:24]}.json"


def _remember(stack: Stack, hosts: list[list[Any]]) -> None:
    assert stack.path is not None
    hint = {"file": str(stack.path), "sha256": stack.source_hash, "uri_env": os.environ.get(URI_ENV), "hosts": hosts}
    path = _hint_path(stack.path)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == hint:
            return
    import tempfile

    with contextlib.suppress(OSError):  # the cache is disposable: never fail on it
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hint-")
        with os.fdopen(fd, "w") as out:
            json.dump(hint, out)
        os.replace(tmp, path)
