"""How many changes virtplan applies at once on one host, unless `Host(workers=N)` says.

Most of a change's time is spent waiting, not computing here: libvirtd spawns QEMU and
talks to its monitor, QEMU sets a guest up, a stopped guest's process is reaped, a pool
allocates a volume. So the number follows what the *host* can run at once (its CPU count
as libvirt reports it, `virConnectGetInfo`), not this machine's cores, and is never more
than the changes there are:

    workers = min(changes, clamp(PER_CPU * host CPUs, AT_LEAST, AT_MOST))

Measured on a 2-CPU host (50 blank TCG guests, bench/whole_process.py's workload, two
alternating rounds while other work loaded the machine, medians; ratios to the 8-thread
raw libvirt floor, converge / destroy): 4 at once 1.28x / 1.53x, 6 1.22x / 1.09x, 8 1.01x
/ 1.07x, 16 1.41x / 1.11x (all over one connection). One connection's calls are served
by at most `max_client_requests` of libvirtd's workers at a time (5 by default), so the
workers of a host are spread over one connection per 5 (`virtplan.apply.lanes`). A host
with more CPUs gets more, as its QEMU starts run side by side; AT_MOST bounds what one
apply asks of one libvirtd.

Deleting is mostly waiting for QEMU processes to exit (libvirt's destroy signals QEMU and
polls until it is gone, about 2 s each here whatever runs beside it), so a host whose
changes all delete gets twice the workers: 10 running VMs destroyed in one round instead
of two (destroy of 10 VMs: 4.4 s with 8 workers, see the README's Performance for now).

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
#: Never more (4 connections' worth of calls with libvirtd's defaults).
AT_MOST = 16


def host_cpus(conn: Any) -> int | None:
    """The host's CPU count as libvirt reports it (`virConnectGetInfo`), or None."""
    with contextlib.suppress(Exception):  # drivers without node info; a lost connection shows up later
        cpus = int(conn.getInfo()[2])
        if cpus > 0:
            return cpus
    return None


def choose(cpus: int | None, changes: int | None = None, deleting: bool = False) -> int:
    """Workers for a host with `cpus` CPUs (None: unknown) and `changes` changes to make;
    twice as many (within AT_MOST) when they all delete (`deleting`)."""
    workers = AT_LEAST if cpus is None else min(AT_MOST, max(AT_LEAST, PER_CPU * cpus))
    if deleting:
        workers = min(AT_MOST, 2 * workers)
    if changes is not None:
        workers = min(workers, max(1, changes))
    return workers


def workers_for(host: Host, conn: Any, changes: int | None = None, deleting: bool = False) -> int:
    """The host's declared `workers`, else the choice for it (asking libvirt over `conn`)."""
    if host.workers is not None:
        return host.workers
    return choose(host_cpus(conn), changes, deleting)
