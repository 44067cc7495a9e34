"""Reading a host for import: every persistent object, parsed as `observe` parses it.

Read-only, except that active pools are refreshed first so that files put there without
libvirt are seen as volumes (a refresh changes no data).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from virtplan.hosts.pools import refresh_pool

if TYPE_CHECKING:
    from virtplan.hosts.observe import HostState


def read_host(conn: Any, host_name: str, uri: str, stack_name: str) -> HostState:
    """Everything on the host, parsed like `observe` does (pools refreshed first)."""
    import libvirt

    from virtplan.hosts.ledger import DEFAULT_POOL
    from virtplan.hosts.observe import observe_host

    hidden = frozenset({DEFAULT_POOL})  # virtplan's own records
    pools = [
        p for p in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_PERSISTENT) if p.name() not in hidden
    ]
    for pool in pools:
        if pool.isActive():
            with contextlib.suppress(libvirt.libvirtError):
                refresh_pool(pool)  # files put there without libvirt
    wanted = {
        "vm": {d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)},
        "pool": {p.name() for p in pools},
        "network": set(),
        "volume": set(),
    }
    return observe_host(conn, host_name, uri, wanted, stack_name, hidden_pools=hidden)
