"""The last guard before a volume is deleted: nothing may still back onto it.

The planner refuses such plans (`virtplan.plan.protection`); this check runs again right
before each deletion, against the host as it is then.
"""

from __future__ import annotations

import threading
from typing import Any

from virtplan.errors import VirtplanError
from virtplan.hosts.chains import backing_map

_lock = threading.Lock()


class ProtectedVolumeError(VirtplanError):
    """A volume others back onto was about to be deleted."""


def refuse_if_backing(applier: Any, address: str, path: str) -> None:
    """Raise if a volume still backs onto `path` (checked right before deleting it).

    The host's backing map is read once per apply run and host, then kept up to date with
    the deletions of the run itself."""
    with _lock:
        cache = getattr(applier, "_backing_users", None)
        if cache is None:
            cache = backing_map(applier.conn)
            applier._backing_users = cache
        users = sorted(u for u in cache.get(path, []) if u != path)
        if users:
            raise ProtectedVolumeError(
                f"{address}: refusing to delete it: {', '.join(users)} back onto it (copy-on-write overlays "
                "of another stack or a clone); destroy those first"
            )
        for dependents in cache.values():
            if path in dependents:
                dependents.remove(path)  # this volume is going now
