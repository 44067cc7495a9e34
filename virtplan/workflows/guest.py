"""Reaching a deployed VM's guest: its address, `virtplan ssh`, `virtplan console`.

The address is what the host knows: the DHCP lease of the VM's first NIC that has one,
else the address its network reserves for it (a NIC's `ip=`), else what a probe-style
guest reports on its console. The ssh command uses the stack's declared cloud-init user
and the private key beside a declared public key (found in ~/.ssh), jumps through the
hypervisor when the host is reached over ssh (guests on NAT networks are only reachable
from there), and keeps each VM's host key in a known_hosts file of its own, keyed by the
domain's UUID: a re-created VM is a new machine, and never trips over its predecessor's key.
"""

from __future__ import annotations

import os
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from virtplan.errors import StackLoadError, VirtplanError

if TYPE_CHECKING:
    from virtplan.engine import Engine
    from virtplan.model import VM, Stack


class GuestUnreachable(VirtplanError):
    """The VM is not deployed, not running, or has no address yet."""


def declared_vm(stack: Stack, name: str) -> VM:
    """The VM `name` the stack declares (a readable error if none, or one per host)."""
    matches = [v for v in stack.vms if v.name == name]
    if not matches:
        names = ", ".join(sorted(v.name for v in stack.vms)) or "none"
        raise StackLoadError(f"the stack declares no VM {name!r} (VMs: {names})")
    if len(matches) > 1:
        raise StackLoadError(f"several hosts have a VM {name!r}; this command takes a unique name")
    return matches[0]


def vm_on_its_host(engine: Engine, name: str) -> tuple[VM, Any]:
    """The declared VM `name` and the connection to its host (opened by `engine`)."""
    vm = declared_vm(engine.stack, name)
    assert vm.host is not None  # validation gave every VM a host
    return vm, engine.connection(vm.host.name)


@dataclass
class GuestAddress:
    ip: str
    how: str  # "lease", "reserved" or "guest report"
    uuid: str
    uri: str


def guest_address(engine: Engine, vm: VM) -> GuestAddress:
    """Where the guest of `vm` answers (see the module docstring for the order)."""
    import libvirt

    from virtplan.hosts.observe import dhcp_leases

    assert vm.host is not None
    conn = engine.connection(vm.host.name)
    try:
        dom = conn.lookupByName(vm.name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise GuestUnreachable(f"{vm.address} is not deployed; run `virtplan apply` first") from None
        raise
    if not dom.isActive():
        raise GuestUnreachable(f"{vm.address} is not running")
    root = ET.fromstring(dom.XMLDesc(0))
    nics = [
        ((i.find("mac").get("address") or "").lower(), i.find("source").get("network"))  # type: ignore[union-attr]
        for i in root.iterfind("devices/interface")
        if i.find("mac") is not None and i.find("source") is not None
    ]
    uuid, uri = dom.UUIDString(), vm.host.uri
    leases = dhcp_leases(conn, {n for _, n in nics if n})
    for mac, _ in nics:
        if mac in leases:
            return GuestAddress(leases[mac], "lease", uuid, uri)
    for mac, network in nics:
        ip = _reservation(conn, network, mac) if network else None
        if ip:
            return GuestAddress(ip, "reserved", uuid, uri)
    report = engine.guest_report(vm.host.name, vm.name) if vm.serial and vm.console_log else None
    if report and report.get("ip"):
        return GuestAddress(report["ip"], "guest report", uuid, uri)
    raise GuestUnreachable(
        f"{vm.address} has no address yet: no DHCP lease, no reserved ip= on its networks, and its console "
        "reports none (is the guest still booting?)"
    )


def _reservation(conn: object, network: str, mac: str) -> str | None:
    import libvirt

    from virtplan.documents.parse import parse_network

    try:
        xml = conn.networkLookupByName(network).XMLDesc(0)  # type: ignore[attr-defined]
    except libvirt.libvirtError:
        return None
    for r in parse_network(ET.fromstring(xml))["reservations"]:
        if r["mac"] == mac:
            return r["ip"]
    return None


# -- ssh ------------------------------------------------------------------------------------
@dataclass
class SshCommand:
    argv: list[str]
    address: GuestAddress
    user: str | None
    identity: Path | None
    notes: list[str] = field(default_factory=list)


def ssh_command(
    engine: Engine,
    vm: VM,
    command: list[str] | None = None,
    user: str | None = None,
    identity: Path | None = None,
    home: Path | None = None,
) -> SshCommand:
    """The ssh command line that logs into `vm`'s guest (see the module docstring)."""
    from virtplan.cache import cache_dir

    address = guest_address(engine, vm)
    notes = []
    ci = vm.cloud_init
    user = user or (ci.user if ci is not None and ci.user else None)
    if identity is None and ci is not None and ci.ssh_keys:
        identity = matching_private_key([str(k) for k in ci.ssh_keys], home or Path.home() / ".ssh")
        if identity is None:
            notes.append("no private key in ~/.ssh matches the stack's ssh_keys; ssh uses its defaults (agent, config)")
    known = cache_dir() / "ssh" / f"{address.uuid}.known_hosts"
    known.parent.mkdir(parents=True, exist_ok=True)
    argv = ["ssh", "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=accept-new"]
    if identity is not None:
        argv += ["-i", str(identity)]
    jump = jump_host(address.uri)
    if jump:
        argv += ["-J", jump]
    argv.append(f"{user}@{address.ip}" if user else address.ip)
    if command:
        argv += ["--", *command]
    return SshCommand(argv, address, user, identity, notes)


def matching_private_key(public_keys: list[str], folder: Path) -> Path | None:
    """The private key in `folder` whose `.pub` holds one of `public_keys` (by key blob)."""
    wanted = {k.split()[1] for k in public_keys if len(k.split()) >= 2}
    try:
        candidates = sorted(folder.glob("*.pub"))
    except OSError:
        return None
    for pub in candidates:
        try:
            parts = pub.read_text().split()
        except OSError:
            continue
        private = pub.with_suffix("")
        if len(parts) >= 2 and parts[1] in wanted and private.is_file():
            return private
    return None


def jump_host(uri: str) -> str | None:
    """`user@host:port` of the hypervisor for a libvirt URI reached over ssh, else None."""
    parsed = urllib.parse.urlsplit(uri)
    transport = parsed.scheme.partition("+")[2]
    if transport not in ("ssh", "libssh", "libssh2") or not parsed.hostname:
        return None
    host = parsed.hostname if ":" not in parsed.hostname else f"[{parsed.hostname}]"
    out = f"{parsed.username}@{host}" if parsed.username else host
    return f"{out}:{parsed.port}" if parsed.port else out


def exec_ssh(cmd: SshCommand) -> None:
    """Replace this process with ssh (its exit code becomes ours)."""
    import shutil

    if shutil.which(cmd.argv[0]) is None:
        raise GuestUnreachable("ssh is not installed here (Debian: apt-get install openssh-client)")
    os.execvp(cmd.argv[0], cmd.argv)
