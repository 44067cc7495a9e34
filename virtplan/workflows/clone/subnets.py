"""Subnets for a clone's networks: addresses moved to a mapped subnet, free subnets picked.

Pure functions. An address keeps its offset in the subnet (gateways, DHCP ranges and
fixed IPs keep their place); a picked subnet is deterministic for the same clone and
never overlaps a subnet in use.
"""

from __future__ import annotations

import hashlib
import ipaddress

from virtplan.workflows.clone.options import CloneError

#: Subnets tried for clone networks when the source's would clash (a clone's own range).
AUTO_SUBNETS = ipaddress.IPv4Network("10.128.0.0/9")


def shift(ip: str | ipaddress.IPv4Address, old: ipaddress.IPv4Network, new: ipaddress.IPv4Network, what: str) -> str:
    """`ip` at the same offset in `new` as it has in `old`; CloneError if it has no place there."""
    offset = int(ipaddress.IPv4Address(ip)) - int(old.network_address)
    moved = ipaddress.IPv4Address(int(new.network_address) + offset)
    if moved not in new or moved in (new.network_address, new.broadcast_address):
        raise CloneError(f"{what} {ip} has no place in {new} (mapped from {old}); map to a subnet at least as big")
    return str(moved)


def free_subnet(prefix: int, taken: list[ipaddress.IPv4Network], seed: str) -> ipaddress.IPv4Network:
    """A /`prefix` in AUTO_SUBNETS overlapping none of `taken`, the same for the same `seed`."""
    count = 2 ** (prefix - AUTO_SUBNETS.prefixlen) if prefix >= AUTO_SUBNETS.prefixlen else 0
    if not count:
        raise CloneError(f"no free /{prefix} subnet to give the clone; pass --subnet-map OLD=NEW")
    size, base = 2 ** (32 - prefix), int(AUTO_SUBNETS.network_address)
    start = int(hashlib.sha256(seed.encode()).hexdigest(), 16) % count
    for i in range(count):
        net = ipaddress.IPv4Network((base + ((start + i) % count) * size, prefix))
        if not any(net.overlaps(t) for t in taken):
            return net
    raise CloneError(f"no free /{prefix} subnet to give the clone; pass --subnet-map OLD=NEW")
