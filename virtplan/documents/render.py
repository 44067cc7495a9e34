"""Render libvirt XML and cloud-init documents from the model through jinja2 templates.

Templates live in `templates/` (shipped inside the wheel as `virtplan/documents/templates`); a
stack may override any of them with `use_templates(folder)`. XML templates autoescape, so
names and descriptions containing `<`, `&` or quotes can neither break nor inject XML.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from virtplan.documents.capabilities import HostFacts
from virtplan.model import VM, Network, Pool, Stack, Volume
from virtplan.model.resources import RAW_DOCUMENTS
from virtplan.model.secrets import PROCESS_KEY, Secret, keyed_digest

if TYPE_CHECKING:
    import jinja2

NAMESPACE = "https://virtplan.dev/xmlns/owner/1"
#: The built-in templates: the repository's `templates/` folder (a wheel ships it as
#: `virtplan/documents/templates`).
BUILTIN_TEMPLATES = next(
    (p for p in (Path(__file__).parent / "templates", Path(__file__).parents[2] / "templates") if p.is_dir()),
    Path(__file__).parents[2] / "templates",
)
_BUS_PREFIX = {"virtio": "vd", "scsi": "sd", "sata": "sd", "ide": "hd"}


def template_dirs(override: Path | None = None) -> list[Path]:
    """Where templates are looked up: the stack's own folder first, then the built-ins."""
    return [override, BUILTIN_TEMPLATES] if override else [BUILTIN_TEMPLATES]


@cache
def environment(override: Path | None = None) -> jinja2.Environment:
    """The jinja2 environment for a template folder (cached per folder). jinja2 is imported
    here, the one place that needs it: planning with the built-in templates renders nothing
    (virtplan.documents.fastspec), so a plan does not pay for it."""
    import jinja2

    loader = jinja2.FileSystemLoader([str(p) for p in template_dirs(override)])
    return jinja2.Environment(
        loader=loader,
        autoescape=lambda name: bool(name and name.endswith(".xml.j2")),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        bytecode_cache=_compiled_templates(),
    )


def _compiled_templates() -> jinja2.BytecodeCache | None:
    """Templates compiled once per change of their text rather than in every process (the
    domain template alone takes 10 ms), kept in the cache folder (deletable at any time).
    jinja2 recompiles a template whose text changed; the folder is named after this
    module's text and jinja2's version, which decide how a text compiles."""
    import jinja2

    from virtplan.cache import cache_folder

    class Quiet(jinja2.FileSystemBytecodeCache):
        def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
            with contextlib.suppress(OSError):  # a full or read-only disk costs a compile, nothing else
                super().dump_bytecode(bucket)

    settings = hashlib.sha256(Path(__file__).read_bytes() + jinja2.__version__.encode()).hexdigest()[:16]
    folder = Path(cache_folder()) / "templates" / settings
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return Quiet(str(folder))


def derived_mac(stack_name: str, vm_address: str, index: int) -> str:
    """A stable locally administered MAC in QEMU's 52:54:00 range for a NIC without one."""
    digest = hashlib.sha256(f"{stack_name}\0{vm_address}\0{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def target_names(buses: list[str]) -> list[str]:
    """Device names per bus in order: virtio -> vda, vdb; scsi/sata -> sda; ide -> hda."""
    counters: dict[str, int] = {}
    names = []
    for bus in buses:
        prefix = _BUS_PREFIX[bus]
        n = counters.get(prefix, 0)
        counters[prefix] = n + 1
        names.append(prefix + chr(ord("a") + n))
    return names


@dataclass
class Identity:
    """What an existing object keeps across updates: its UUID and its NICs' MACs."""

    uuid: str | None = None
    macs: list[str] = field(default_factory=list)


#: What a new object keeps: nothing (read only).
_NO_IDENTITY = Identity()


@dataclass
class DiskView:
    """A disk as domain.xml.j2 writes it: its volume and format, bus, device name, boot order."""

    pool: str
    volume: str
    format: str
    bus: str
    target: str
    boot: int | None


@dataclass
class NicView:
    """A NIC as domain.xml.j2 writes it: MAC, model, and its network or host bridge."""

    mac: str
    model: str
    network: str | None
    bridge: str | None


@dataclass
class SeedView:
    """The cloud-init seed volume as domain.xml.j2 attaches it (a SCSI CD-ROM)."""

    pool: str
    volume: str
    target: str


@dataclass
class DomainContext:
    """Everything domain.xml.j2 needs beyond the VM itself (see `Renderer.domain_context`)."""

    namespace: str
    stack: str
    project: str
    type: str
    arch: str
    machine: str | None
    uuid: str | None
    disks: list[DiskView]
    nics: list[NicView]
    seed: SeedView | None
    seed_digest: str | None
    seed_volume: str | None
    graphics_password: str | None
    graphics_password_digest: str | None
    kernel: str | None = None
    initrd: str | None = None
    console_log: str | None = None

    @property
    def needs_scsi(self) -> bool:
        return self.seed is not None or any(d.bus == "scsi" for d in self.disks)


@dataclass
class Reservation:
    """A DHCP reservation: the NIC's MAC, the VM's name, the fixed IP."""

    mac: str
    name: str
    ip: str


@dataclass
class NetworkContext:
    """Everything network.xml.j2 needs beyond the network itself."""

    namespace: str
    stack: str
    project: str
    uuid: str | None
    range: tuple[str, str]
    reservations: list[Reservation]


@dataclass
class VolumeContext:
    """Everything volume.xml.j2 needs beyond the volume itself."""

    capacity: int
    format: str
    backing_path: str | None
    backing_format: str | None


def console_log_path(vm: VM) -> str | None:
    """Where the serial console is logged: a file in the seed pool, or None."""
    if not (vm.serial and vm.console_log) or vm.seed_pool is None:
        return None
    return in_folder(vm.seed_pool.path, vm.console_log_name)


def volume_path(vol: Volume) -> str:
    """Where a volume of a dir pool lives on the host."""
    assert vol.pool is not None
    return in_folder(vol.pool.path, vol.name)


def in_folder(folder: str, name: str) -> str:
    """``str(Path(folder) / name)``, without building paths for every VM of every plan."""
    if "/" in name or name in ("", ".", ".."):
        return str(Path(folder) / name)
    base = _folder(folder)
    return name if base == "." else base + name if base.endswith("/") else f"{base}/{name}"


@functools.lru_cache(maxsize=256)
def _folder(path: str) -> str:
    return str(Path(path))


class Renderer:
    """Renders every document of one stack, given the facts of its hosts.

    `identities` maps VM and network addresses to what existing objects keep (UUID, MACs),
    so updates preserve them; new objects get derived MACs and libvirt-assigned UUIDs.
    `keys` maps host names to the key of the stack's keyed digests of secrets on that host
    (see `virtplan.model.secrets`); a host without one gets this process's key.
    """

    def __init__(
        self,
        stack: Stack,
        facts: dict[str, HostFacts],
        identities: dict[str, Identity] | None = None,
        keys: dict[str, bytes] | None = None,
    ):
        self.stack = stack
        self.facts = facts
        self.identities = identities or {}
        self.keys: dict[str, bytes] = dict(keys or {})
        self._fixed: tuple[tuple[int, int], dict[int, list[tuple[VM, int, str]]]] | None = None

    def secret_digest(self, vm: VM, value: str) -> str:
        """The keyed digest of a secret of `vm` under its host's key."""
        host = vm.host.name if vm.host is not None else ""
        return keyed_digest(self.keys.get(host, PROCESS_KEY), value)

    def keyed_as_on(self, vm: VM, host: str) -> Renderer:
        """This renderer, digesting `vm`'s secrets under `host`'s key: a VM that moves from
        `host` is compared with what it has there."""
        twin = copy.copy(self)
        if vm.host is not None:
            twin.keys = {**self.keys, vm.host.name: self.keys.get(host, PROCESS_KEY)}
        return twin

    # -- identities -------------------------------------------------------------------
    def macs(self, vm: VM, address: str | None = None) -> list[str]:
        """The MAC of each NIC: declared, else kept from libvirt, else derived (`address`:
        the VM's, if the caller has it already)."""
        address = address or vm.address
        kept = self.identities.get(address, _NO_IDENTITY).macs
        out = []
        for i, nic in enumerate(vm.nics):
            if nic.mac:
                out.append(nic.mac.lower())
            elif i < len(kept):
                out.append(kept[i])
            else:
                out.append(derived_mac(self.stack.name, address, i))
        return out

    def reservations(self, net: Network) -> list[Reservation]:
        """DHCP reservations for NICs with a fixed IP on `net`, in a stable order."""
        found = [Reservation(self.macs(vm)[i], vm.name, ip) for vm, i, ip in self._fixed_ips().get(id(net), [])]
        return sorted(found, key=lambda r: r.mac)

    def _fixed_ips(self) -> dict[int, list[tuple[VM, int, str]]]:
        """id(network) -> (VM, NIC index, IP) of every NIC with a fixed IP on it: one pass
        over the stack's VMs, not one per network (8 hosts' networks x 800 VMs was a tenth
        of a fleet's no-op plan). Kept while the stack has the same resources."""
        key = (id(self.stack), len(self.stack.resources))
        if self._fixed is None or self._fixed[0] != key:
            index: dict[int, list[tuple[VM, int, str]]] = {}
            for vm in self.stack.vms:
                for i, nic in enumerate(vm.nics):
                    if nic.ip and nic.network is not None:
                        index.setdefault(id(nic.network), []).append((vm, i, nic.ip))
            self._fixed = (key, index)
        return self._fixed[1]

    # -- documents --------------------------------------------------------------------
    def _render(self, template: str, **context: object) -> str:
        return self.env.get_template(template).render(**context)

    @property
    def env(self) -> jinja2.Environment:
        """The templates' environment, built on the first render (a plan renders nothing)."""
        return environment(self.stack.template_dir)

    def network_xml(self, net: Network) -> str:
        return self._render("network.xml.j2", net=net, n=self.network_context(net))

    def network_context(self, net: Network) -> NetworkContext:
        start, end = net.range_ips if net.cidr and net.dhcp else ("", "")
        return NetworkContext(
            NAMESPACE,
            self.stack.name,
            self.stack.project,
            self.identities.get(net.address, _NO_IDENTITY).uuid,
            (str(start), str(end)),
            self.reservations(net),
        )

    def pool_xml(self, pool: Pool) -> str:
        return self._render("pool.xml.j2", pool=pool)

    def volume_xml(self, vol: Volume) -> str:
        return self._render("volume.xml.j2", vol=vol, v=self.volume_context(vol))

    @staticmethod
    def volume_context(vol: Volume) -> VolumeContext:
        backing = vol.backing
        if isinstance(backing, str):  # an image on the host the stack does not manage
            return VolumeContext(vol.size_bytes, vol.format, backing, vol.backing_format or "qcow2")
        return VolumeContext(
            capacity=vol.size_bytes,
            format=vol.format,
            backing_path=volume_path(backing) if backing is not None else None,
            backing_format=backing.format if backing is not None else None,
        )

    def domain_xml(self, vm: VM, reveal_secrets: bool = True) -> str:
        """The domain XML; with reveal_secrets=False a VNC/SPICE password is masked."""
        return self._render("domain.xml.j2", vm=vm, d=self.domain_context(vm, reveal_secrets))

    def hardware(self, vm: VM) -> tuple[str, str, str | None]:
        """The domain type, architecture and machine type `vm` gets on its host (a
        ValueError naming the field if the host offers none that fits)."""
        assert vm.host is not None
        facts = self.facts[vm.host.name]
        guest = facts.guest(vm.arch)
        machine = facts.machine(vm.machine, vm.arch) if (guest.machines or vm.machine) else None
        return facts.domain_type(vm.host.domain_type, vm.arch), guest.arch, machine

    def graphics_password_digest(self, vm: VM) -> str | None:
        """The keyed digest of the VM's console password, if it has one."""
        password = vm.graphics.password if vm.graphics else None
        return self.secret_digest(vm, password.reveal()) if isinstance(password, Secret) else None

    def vm_seed_digest(self, vm: VM) -> str | None:
        """The digest of the VM's cloud-init seed, if it has one."""
        return self.seed_digest(vm) if vm.cloud_init is not None and vm.seed_pool is not None else None

    def domain_context(self, vm: VM, reveal_secrets: bool = False) -> DomainContext:
        """Everything domain.xml.j2 needs beyond the VM itself, resolved against the host."""
        domain_type, arch, machine = self.hardware(vm)
        buses = [d.bus for d in vm.disks]
        names = target_names(buses)
        disks = [
            DiskView(d.volume.pool.name, d.volume.name, d.volume.format, d.bus, d.target or names[i], d.boot)  # type: ignore[union-attr]
            for i, d in enumerate(vm.disks)
        ]
        address = vm.address
        identity = self.identities.get(address, _NO_IDENTITY)
        macs = self.macs(vm, address)
        nics = [
            NicView(macs[i], n.model, n.network.name if n.network else None, n.bridge) for i, n in enumerate(vm.nics)
        ]
        seed = None
        if vm.cloud_init is not None and vm.seed_pool is not None:
            scsi_taken = sum(1 for b in buses if b in ("scsi", "sata"))
            seed = SeedView(vm.seed_pool.name, vm.seed_volume_name, target_names(["scsi"] * (scsi_taken + 1))[-1])
        return DomainContext(
            namespace=NAMESPACE,
            stack=self.stack.name,
            project=self.stack.project,
            type=domain_type,
            arch=arch,
            machine=machine,
            uuid=identity.uuid,
            disks=disks,
            nics=nics,
            seed=seed,
            seed_digest=self.vm_seed_digest(vm),
            seed_volume=f"{seed.pool}/{seed.volume}" if seed else None,
            graphics_password=_reveal(vm.graphics.password if vm.graphics else None, reveal_secrets),
            graphics_password_digest=self.graphics_password_digest(vm),
            kernel=volume_path(vm.kernel) if vm.kernel is not None else None,
            initrd=volume_path(vm.initrd) if vm.initrd is not None else None,
            console_log=console_log_path(vm),
        )

    # -- cloud-init -------------------------------------------------------------------
    def seed_files(self, vm: VM, reveal_secrets: bool = True, legacy: bool = False) -> dict[str, str]:
        """The NoCloud files; with reveal_secrets=False each secret (a password, a sensitive
        raw document) is replaced by "(sensitive:<its keyed digest>)". `legacy` masks as
        virtplan 0.1 did (unkeyed digests, raw documents in clear): only to recognise its seeds."""
        ci = vm.cloud_init
        assert ci is not None
        hostname = ci.hostname or vm.name
        instance_id = ci.instance_id or f"iid-{vm.name}"

        def show(value: Secret) -> str:
            if reveal_secrets or (legacy and value is not ci.password):
                return value.reveal()
            digest = value.digest() if legacy else self.secret_digest(vm, value.reveal())
            return f"(sensitive:{digest[:16]})"

        password = ci.password if isinstance(ci.password, Secret) else None
        context = {"ci": ci, "vm": vm, "hostname": hostname, "instance_id": instance_id,
                   "password": show(password) if password else None}  # fmt: skip
        raw = {n: (show(v) if isinstance(v := getattr(ci, n), Secret) else v) for n in RAW_DOCUMENTS}
        files = {
            "meta-data": raw["meta_data"] if raw["meta_data"] is not None
            else self._render("cloud-init/meta-data.j2", **context),
            "user-data": raw["user_data"] if raw["user_data"] is not None
            else self._render("cloud-init/user-data.j2", **context),
        }  # fmt: skip
        if raw["network_config"] is not None:
            files["network-config"] = raw["network_config"]
        return files

    def upgraded_seed_digest(self, vm: VM, digest: str) -> str:
        """`digest` of `vm`'s seed, read as this version writes it: a digest virtplan 0.1 wrote
        (unkeyed) of the seed the stack declares now is that seed's keyed digest."""
        ci = vm.cloud_init
        if ci is None or not ci.has_secret or not digest:
            return digest
        try:
            return self.seed_digest(vm) if digest == self.seed_digest(vm, legacy=True) else digest
        except ValueError:
            return digest  # the planner reports why the seed cannot be made

    def seed_digest(self, vm: VM, legacy: bool = False) -> str:
        """A digest of the seed files: plain sha256 when they hold no secret; keyed (under the
        host's key, over the files with each secret masked by its keyed digest) when they do,
        so the digest confirms no guess. `legacy`: the digest virtplan 0.1 wrote."""
        ci = vm.cloud_init
        assert ci is not None
        blob = b"".join(
            name.encode() + b"\0" + content.encode() + b"\0"
            for name, content in sorted(self.seed_files(vm, reveal_secrets=False, legacy=legacy).items())
        )
        if ci.has_secret and not legacy:
            return self.secret_digest(vm, blob.decode())
        return hashlib.sha256(blob).hexdigest()


def _reveal(value: object, reveal: bool) -> str | None:
    if not isinstance(value, Secret):
        return None
    return value.reveal() if reveal else "(sensitive)"
