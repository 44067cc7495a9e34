"""Storage pool helpers shared by apply, console logs and cloning."""

from __future__ import annotations

import time
from typing import Any


def refresh_pool(pool: Any, timeout: float = 30.0) -> None:
    """Refresh a pool, waiting while libvirt builds, clones or wipes other volumes in it.

    libvirt refuses a refresh during such jobs ("pool has asynchronous jobs running"), which
    parallel creates in one pool (ours or anyone's) make likely. Other errors, and jobs
    still running after `timeout` seconds, are raised.
    """
    import libvirt

    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            pool.refresh(0)
            return
        except libvirt.libvirtError as exc:
            if "asynchronous jobs" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
