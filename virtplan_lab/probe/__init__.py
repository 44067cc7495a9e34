"""The probe guest: a tiny real Linux guest that reports, from inside, what it got.

:func:`build_probe` builds (or takes from the cache) a Debian cloud kernel and a
busybox initramfs for direct kernel boot (``<kernel>``, ``<initrd>``,
``<cmdline>``).  Booted with a virtio NIC, a NoCloud seed (ISO 9660 labelled
``cidata`` on a CD-ROM or virtio disk) and its first serial port logged to a
file, the guest:

- obtains an address by DHCP on ``eth0``, sending the seed's ``local-hostname``
  as option 12;
- prints ``GUEST ip=… mac=… hostname=… instance-id=… value=… mem_kib=…
  userdata_sha256=…`` (``hostname`` and ``instance-id`` from ``meta-data``;
  ``value`` from the user-data line ``probe_value: V`` or, failing that, the
  comment ``#probe value=V``; ``mem_kib`` is MemTotal), or
  ``GUEST-ERROR reason=…`` if it cannot;
- prints ``GUEST-MEM mem_kib=…`` whenever MemTotal changes (checked every 2 s;
  needs a virtio memballoon);
- answers ping;
- on an ACPI power-button press (``virsh shutdown``; the domain needs
  ``<features><acpi/></features>``) releases its DHCP lease, prints
  ``GUEST-POWEROFF lease=…`` and powers off;
- with ``probe_tick: S`` in its user-data, prints ``GUEST-TICK seq=N uptime=U
  ip=A mac=M`` every S seconds after its report (``seq`` counts from 1, ``uptime``
  is seconds since boot): a running count that goes on across a live migration.

:func:`wait_for_guest_line` and :func:`wait_for_event` tail the console log.
"""

from virtplan.hosts.guestlog import (
    GUEST,
    GUEST_ERROR,
    GUEST_MEM,
    GUEST_POWEROFF,
    GUEST_TICK,
    parse_guest_line,
    parse_line,
)
from virtplan_lab.probe.build import CMDLINE, MODULES, ProbeBuildError, ProbeImage, build_probe, default_cache_dir
from virtplan_lab.probe.parse import GuestError, GuestEvent, log_size, wait_for_event, wait_for_guest_line

__all__ = [
    "CMDLINE",
    "GUEST",
    "GUEST_ERROR",
    "GUEST_MEM",
    "GUEST_POWEROFF",
    "GUEST_TICK",
    "MODULES",
    "GuestError",
    "GuestEvent",
    "ProbeBuildError",
    "ProbeImage",
    "build_probe",
    "default_cache_dir",
    "log_size",
    "parse_guest_line",
    "parse_line",
    "wait_for_event",
    "wait_for_guest_line",
]
