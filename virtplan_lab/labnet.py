"""A private layer-2 network that joins private hosts to each other and to the caller.

A :class:`LabNetwork` is a Linux bridge in a network namespace of its own (the *lab
namespace*, held open only by a file descriptor of this process), with:

- one veth pair to the caller's namespace: ``vplab<K>`` on the caller's side, address
  ``10.250.<K>.1/24``, so tests and virtplan reach every host directly by address;
- one veth pair per attached host: ``eth0`` inside the host's network namespace, with
  address ``10.250.<K>.<slot>/24``, the other end enslaved to the bridge.

Hosts on one lab network reach each other on every port (libvirtd's TLS port, sshd,
QEMU's migration and NBD ports): there is no firewall in the lab or host namespaces.

``K`` (the subnet and the name of the caller's interface) is claimed with an exclusive
``flock`` on ``/var/tmp/virtplan-labnet/<K>.lock``, so concurrent processes (pytest-xdist
workers) never share a subnet or an interface name; the lock dies with its process, and
a subnet the machine already routes is never used.

Clean-up needs no bookkeeping: the lab namespace lives only as long as this process holds
its descriptor, and destroying it destroys the bridge and every veth pair with an end in
it, including ``vplab<K>`` in the caller's namespace. :meth:`LabNetwork.close` does that
and waits until the interface is gone.  The only change outside private namespaces is the
``vplab<K>`` interface (with its address, route and one static neighbour entry).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

#: Lab subnets are 10.250.K.0/24.
LAB_SUPERNET = ipaddress.IPv4Network("10.250.0.0/16")
#: Where the subnet claims (flock'ed files) live.
CLAIM_DIR = Path("/var/tmp/virtplan-labnet")
#: Host slots: .2 to .253 (.1 is the caller's side, .254 the black hole).
FIRST_SLOT, LAST_SLOT = 2, 253
BLACKHOLE_SLOT = 254
#: A MAC address that no interface has: frames sent to it go nowhere.
_NOBODY_MAC = "02:76:71:00:00:fe"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class LabNetworkError(RuntimeError):
    """A lab network could not be created or a host could not be attached."""


class LabNetwork:
    """A bridge in a private namespace, reachable from the caller at ``10.250.K.1``."""

    def __init__(self) -> None:
        self.index: int | None = None
        self._claim: IO[bytes] | None = None
        self._netns_fd: int | None = None

    # -- public interface -------------------------------------------------------------

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.250.{self._index}.0/24")

    @property
    def gateway(self) -> str:
        """The caller's address on the lab network."""
        return self.address(1)

    @property
    def interface(self) -> str:
        """The caller's end of the uplink (``vplab<K>``)."""
        return f"vplab{self._index}"

    @property
    def blackhole(self) -> str:
        """An address that swallows every packet sent to it: connections to it hang."""
        return self.address(BLACKHOLE_SLOT)

    def address(self, slot: int) -> str:
        return str(self.subnet.network_address + slot)

    def start(self) -> None:
        """Claim a subnet, create the lab namespace, the bridge and the uplink."""
        if self._netns_fd is not None:
            raise RuntimeError("lab network already started")
        self.index, self._claim = _claim_subnet()
        try:
            self._netns_fd = _new_netns()
            lab = self._in_lab
            lab("ip", "link", "set", "lo", "up")
            lab("ip", "link", "add", "br0", "type", "bridge")
            lab("ip", "link", "set", "br0", "up")
            lab(
                "ip", "link", "add", "uplink", "type", "veth", "peer", "name", self.interface, "netns", str(os.getpid())
            )
            lab("ip", "link", "set", "uplink", "master", "br0", "up")
            _run("ip", "address", "add", f"{self.gateway}/24", "dev", self.interface)
            _run("ip", "link", "set", self.interface, "up")
            # A neighbour no one owns: frames to the black hole are sent and never answered.
            _run(
                "ip", "neigh", "replace", self.blackhole, "lladdr", _NOBODY_MAC,
                "dev", self.interface, "nud", "permanent",
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def attach(self, netns_fd: int, slot: int) -> str:
        """Give the network namespace open as ``netns_fd`` an ``eth0`` on the lab at ``slot``.

        Returns the address (``10.250.K.<slot>``).  The namespace is named by an open
        descriptor, not a pid, so a process that dies meanwhile cannot redirect the veth.
        """
        if not FIRST_SLOT <= slot <= LAST_SLOT:
            raise ValueError(f"slot {slot} outside {FIRST_SLOT}..{LAST_SLOT}")
        port = f"h{slot}"
        address = self.address(slot)
        target = f"/proc/self/fd/{netns_fd}"
        self._in_lab(
            "ip", "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "address", self.mac(slot), "netns", target,
            fds=(netns_fd,),
        )  # fmt: skip
        self._in_lab("ip", "link", "set", port, "master", "br0", "up")
        host = ("nsenter", f"--net={target}")
        _run(*host, "ip", "address", "add", f"{address}/24", "dev", "eth0", pass_fds=(netns_fd,))
        _run(*host, "ip", "link", "set", "eth0", "up", pass_fds=(netns_fd,))
        return address

    def mac(self, slot: int) -> str:
        """The MAC address of the host at ``slot``: fixed, so that a host started later at
        the same address is not shunned by neighbours' ARP caches still holding the old one."""
        return f"02:76:70:{self._index:02x}:00:{slot:02x}"

    def detach(self, slot: int) -> None:
        """Delete a host's veth pair (both ends) if it still exists; idempotent."""
        if self._netns_fd is not None:
            self._in_lab("ip", "link", "del", f"h{slot}", check=False)

    def close(self, timeout: float = 10) -> None:
        """Destroy the lab namespace (bridge, veths, uplink) and release the subnet; idempotent."""
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None
            deadline = time.monotonic() + timeout
            while _interface_exists(self.interface):  # the kernel destroys namespaces asynchronously
                if time.monotonic() > deadline:
                    raise LabNetworkError(f"{self.interface} still exists {timeout:g} s after closing the lab")
                time.sleep(0.02)
        if self._claim is not None:
            self._claim.close()  # releases the flock
            self._claim = None

    def __enter__(self) -> LabNetwork:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabNetwork({self.subnet if self.index is not None else 'not started'})"

    # -- internals ----------------------------------------------------------------------

    @property
    def _index(self) -> int:
        if self.index is None:
            raise RuntimeError("lab network not started")
        return self.index

    def _in_lab(self, *command: str, check: bool = True, fds: tuple[int, ...] = ()) -> None:
        """Run ``command`` in the lab namespace (``fds`` are passed on to it)."""
        if self._netns_fd is None:
            raise RuntimeError("lab network not started")
        fd = self._netns_fd
        _run("nsenter", f"--net=/proc/self/fd/{fd}", *command, check=check, pass_fds=(fd, *fds))


def _run(*command: str, check: bool = True, pass_fds: tuple[int, ...] = ()) -> None:
    result = subprocess.run(
        command, capture_output=True, text=True, env={"PATH": _PATH}, pass_fds=pass_fds, check=False
    )
    if check and result.returncode != 0:
        raise LabNetworkError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}")


def _new_netns() -> int:
    """A new, empty network namespace, held only by the returned descriptor."""
    holder = subprocess.Popen(
        ["unshare", "--net", "sleep", "60"], env={"PATH": _PATH}, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        own = os.stat("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while True:
            if holder.poll() is not None:
                raise LabNetworkError(f"unshare --net exited with status {holder.returncode}")
            with contextlib.suppress(OSError):
                fd = os.open(f"/proc/{holder.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino):
                    return fd
                os.close(fd)
            if time.monotonic() > deadline:
                raise LabNetworkError("unshare --net did not create a namespace within 10 s")
            time.sleep(0.005)
    finally:
        with contextlib.suppress(ProcessLookupError):
            holder.send_signal(signal.SIGKILL)
        holder.wait()


def _claim_subnet() -> tuple[int, IO[bytes]]:
    """Lock the first free 10.250.K.0/24: not claimed, not routed here, no vplab<K> interface."""
    CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    routed = _routed_networks()
    for index in range(256):
        subnet = ipaddress.IPv4Network(f"10.250.{index}.0/24")
        if any(subnet.overlaps(net) for net in routed) or _interface_exists(f"vplab{index}"):
            continue
        claim = open(CLAIM_DIR / f"{index}.lock", "wb")  # noqa: SIM115 -- held for the lab's lifetime
        try:
            fcntl.flock(claim, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            claim.close()
            continue
        if _interface_exists(f"vplab{index}"):  # created between the check and the lock
            claim.close()
            continue
        return index, claim
    raise LabNetworkError(f"no free /24 in {LAB_SUPERNET} for a lab network")


def _routed_networks() -> list[ipaddress.IPv4Network]:
    """Destinations of the caller's IPv4 routes (all tables), except the default route."""
    result = subprocess.run(
        ["ip", "-json", "-4", "route", "show", "table", "all"],
        capture_output=True,
        text=True,
        env={"PATH": _PATH},
        check=True,
    )
    nets = []
    for route in json.loads(result.stdout or "[]"):
        dst = route.get("dst", "default")
        if dst == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(dst, strict=False))
    return nets


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True
