"""How many changes virtplan applies at once on one host, unless `Host(workers=N)` says.

Most of a change's time is spent waiting, not computing here: libvirtd spawns QEMU and
talks to its monitor, QEMU sets a guest up, a stopped guest's process is reaped, a
storage pool allocates. So the right number is a multiple of what the *host* can run at
once (its CPU count, as libvirt reports it in `virConnectGetInfo`), not of this machine's
cores, and never more than the changes there are:

    workers = min(changes, clamp(PER_CPU * host CPUs, AT_LEAST, AT_MOST))

Measured with bench/whole_process.py on a 2-CPU host (50 blank TCG guests): 4 at once
left converge at 1.3x and destroy at 1.6x the 8-thread raw libvirt floor; 8 brought both
near 1.0x, and more than 8 gained nothing there (one connection's calls are served by
at most `max_client_requests`, 5 by default, of libvirtd's workers at a time, so the
extra ones only queue). AT_MOST keeps a big host from getting hundreds of threads
queued on one connection.

A host that cannot tell (a driver without node info) gets AT_LEAST. The choice costs one
libvirt call per host and apply.
"""

from __future__ import annotations

import contextlib
from typing import Any

from virtplan.model import Host

#: Changes at once per CPU of the host.
PER_CPU = 4
#: Never fewer, whatever the host says (unless there are fewer changes).
AT_LEAST = 8
#: Never more.
AT_MOST = 32


def host_cpus(conn: Any) -> int | None:
    """The host's CPU count as libvirt reports it (`virConnectGetInfo`), or None."""
    with contextlib.suppress(Exception):  # drivers without node info; a lost connection shows up later
        cpus = int(conn.getInfo()[2])
        if cpus > 0:
            return cpus
    return None


def choose(cpus: int | None, changes: int | None = None) -> int:
    """Workers for a host with `cpus` CPUs (None: unknown) and `changes` changes to make."""
    workers = AT_LEAST if cpus is None else min(AT_MOST, max(AT_LEAST, PER_CPU * cpus))
    if changes is not None:
        workers = min(workers, max(1, changes))
    return workers


def workers_for(host: Host, conn: Any, changes: int | None = None) -> int:
    """The host's declared `workers`, else the choice for it (asking libvirt over `conn`)."""
    if host.workers is not None:
        return host.workers
    return choose(host_cpus(conn), changes)
