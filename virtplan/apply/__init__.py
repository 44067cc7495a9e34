"""Apply: carrying out a plan through libvirt, host by host, change by change.

The executor schedules changes (dependencies first, a bounded number at once per host);
each change is run by its step. Freezing disks into copy-on-write layers and snapshots
are steps too.
"""
