"""Read a VM's serial console log through libvirt, so it works on remote hosts too.

libvirt's virtlogd writes the log to `<vm>-console.log` in the VM's pool (see
`render.console_log_path`); the pool is refreshed so libvirt lists the file, and its bytes
come back over a volume download stream.
"""

from __future__ import annotations

from typing import Any

from virtplan.errors import VirtplanError
from virtplan.hosts.pools import refresh_pool
from virtplan.model import VM


class NoConsoleLog(VirtplanError):
    """The VM has no console log virtplan can read."""


def read_console_log(conn: Any, vm: VM, refresh: bool = True) -> str:
    """The whole console log of `vm` (empty if the guest has not written anything yet).
    With refresh=False the caller has just refreshed the VM's pool."""
    data, _ = console_log_bytes(conn, vm, 0, refresh)
    return data.decode(errors="replace")


def console_log_bytes(conn: Any, vm: VM, offset: int = 0, refresh: bool = True) -> tuple[bytes, int]:
    """The console log of `vm` from byte `offset` on, and the log's size now. A log shorter
    than `offset` was started afresh (libvirt truncates it when the VM starts): then all of
    it is returned."""
    import libvirt

    if not (vm.serial and vm.console_log) or vm.seed_pool is None:
        raise NoConsoleLog(
            f"{vm.address} has no console log: it needs serial=True, console_log=True and a disk "
            "(the log lives in its pool)"
        )
    try:
        pool = conn.storagePoolLookupByName(vm.seed_pool.name)
        if refresh:
            refresh_pool(pool)  # virtlogd creates the file behind libvirt's back
        vol = pool.storageVolLookupByName(vm.console_log_name)
        size = int(vol.info()[1])
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
            return b"", 0  # not started yet, or nothing logged yet
        raise
    if size < offset:
        offset = 0
    if size == offset:
        return b"", size
    stream = conn.newStream(0)
    vol.download(stream, offset, size - offset, 0)
    chunks: list[bytes] = []
    stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
    stream.finish()
    return b"".join(chunks), size


def tail(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (all of it for lines <= 0)."""
    if lines <= 0:
        return text
    return "\n".join(text.splitlines()[-lines:])


# -- the interactive serial console ------------------------------------------------------------
ESCAPE = b"\x1d"  # Ctrl-], as `virsh console`


def attach_console(conn: Any, name: str, fd_in: int, fd_out: int, escape: bytes = ESCAPE) -> str:
    """Connect the terminal `fd_in`/`fd_out` (raw mode is the caller's) to the serial console
    of the running domain `name` until `escape` is typed, input ends or the guest goes
    away; returns why it ended ("escape", "input closed", "console closed")."""
    import contextlib
    import os
    import select
    import threading

    import libvirt

    dom = conn.lookupByName(name)
    if not dom.isActive():
        raise NoConsoleLog(f"VM {name!r} is not running; start it (virtplan apply) to reach its console")
    stream = conn.newStream(0)
    dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_SAFE)
    closed = threading.Event()

    def guest_to_terminal() -> None:
        try:
            while True:
                data = stream.recv(4096)
                if not isinstance(data, bytes) or not data:
                    break
                os.write(fd_out, data)
        except (libvirt.libvirtError, OSError):
            pass
        finally:
            closed.set()

    reader = threading.Thread(target=guest_to_terminal, daemon=True)
    reader.start()
    why = "console closed"
    try:
        while not closed.is_set():
            ready, _, _ = select.select([fd_in], [], [], 0.2)
            if not ready:
                continue
            data = os.read(fd_in, 1024)
            if not data:
                why = "input closed"
                break
            head, hit, _ = data.partition(escape)
            if head:
                stream.send(head)
            if hit:
                why = "escape"
                break
    finally:
        closed.set()
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
    return why
