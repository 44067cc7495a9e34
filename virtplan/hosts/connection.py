"""Connections to libvirt hosts: one readable error naming the host and URI when it fails."""

from __future__ import annotations

import threading
from typing import Any

from virtplan.errors import ConnectionFailed

_quiet = threading.Lock()
_quieted = False


def quiet_libvirt() -> None:
    """Stop libvirt from printing its errors to stderr; virtplan reports them itself."""
    global _quieted
    with _quiet:
        if not _quieted:
            import libvirt

            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _quieted = True


def connect(uri: str, host: str = "") -> Any:
    """Open a libvirt connection, or raise ConnectionFailed naming the host and URI."""
    import libvirt

    quiet_libvirt()
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        label = f"host {host!r} at {uri}" if host else uri
        raise ConnectionFailed(f"cannot connect to {label}: {exc}") from exc
