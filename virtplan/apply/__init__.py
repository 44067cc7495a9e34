"""Apply: carrying out a plan through libvirt, host by host, change by change.

The executor schedules changes (dependencies first, a bounded number at once per host);
each change is carried out by its step (`steps/<kind>.py`), whose operations know how to
run and how to print themselves as the `virsh` commands of `plan --commands`. Freezing
disks into copy-on-write layers (`layers`) and snapshots (`snapshots`) are used by steps
and workflows alike.
"""
