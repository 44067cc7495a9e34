"""Hosts: everything that talks to a libvirt host to read it.

Connections, bulk reads of domains, networks, pools and volumes (observe), the stack's
records and locks kept on the host, console logs, copy-on-write chains and snapshots as
found. Reading only, except the records and locks, which are virtplan's own bookkeeping.
"""
