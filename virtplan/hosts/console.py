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
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL):
            return ""  # not started yet, or nothing logged yet
        raise
    size = vol.info()[1]
    if size == 0:
        return ""
    stream = conn.newStream(0)
    vol.download(stream, 0, size, 0)
    chunks: list[bytes] = []
    stream.recvAll(lambda _s, data, acc: acc.append(data) or len(data), chunks)
    stream.finish()
    return b"".join(chunks).decode(errors="replace")


def tail(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (all of it for lines <= 0)."""
    if lines <= 0:
        return text
    return "\n".join(text.splitlines()[-lines:])
