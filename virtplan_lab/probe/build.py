"""Build the probe guest: a Debian cloud kernel plus a busybox initramfs, cached on disk.

Everything comes from Debian packages, unpacked and never installed:
``linux-image-cloud-amd64`` (resolved to its versioned ``linux-image-<KVER>``
package) and ``busybox-static`` (the installed ``/bin/busybox`` when that package
is installed).  The kernel modules the guest needs (:data:`MODULES` and their
dependencies, read from each module's ``.modinfo``) are packed with busybox and the
scripts in ``guest/`` into a gzip newc initramfs; ``busybox depmod`` writes its
``modules.dep``.

Cache: ``<root>/<KVER>_<kernel version>-busybox_<busybox version>-<digest>/``,
where ``<root>`` is ``cache_dir`` or ``$XDG_CACHE_HOME/virtplan/probe``
(default ``~/.cache/virtplan/probe``) and ``<digest>`` covers the guest scripts and
the module list, so changing either rebuilds.  An entry is built in a temporary
directory under ``<root>`` and renamed into place, under an exclusive lock on
``<root>/.lock``: readers never see a partial entry and concurrent builders do
not download twice.  Which package versions are current is re-read from apt only
when apt's package lists or dpkg's status change, so a cached build costs a few
file ``stat`` calls.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from virtplan_lab.probe import cpio

#: Drivers the guest loads, in order (busybox modprobe also loads their dependencies).
MODULES: tuple[str, ...] = (
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_blk",
    "scsi_common",
    "scsi_mod",
    "virtio_scsi",
    "libata",
    "ata_piix",
    "cdrom",
    "sr_mod",
    "isofs",
    "button",
    "evdev",
    "virtio_balloon",  # live memory changes reach MemTotal (GUEST-MEM lines)
)
#: Kernel command line for direct kernel boot; the guest talks on the first serial port.
CMDLINE = "console=ttyS0 quiet"
KERNEL_METAPACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
ARCH = "amd64"
#: Bump when the layout of a cache entry or of the initramfs changes.
FORMAT = 1

_GUEST_FILES = {  # file in guest/ -> (path in the initramfs, mode)
    "init": ("init", 0o755),
    "main.sh": ("etc/probe/main.sh", 0o755),
    "udhcpc.sh": ("etc/probe/udhcpc.sh", 0o755),
    "acpi-power-button": ("etc/acpi/PWRF/00000080", 0o755),
}
_EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp", "seed", "root")
_APT_LISTS = Path("/var/lib/apt/lists")
_DPKG_STATUS = Path("/var/lib/dpkg/status")
_APT_ARCHIVES = Path("/var/cache/apt/archives")
_INSTALLED_BUSYBOX = Path("/bin/busybox")
_MANIFEST = "manifest.json"
_RESOLVED = "resolved.json"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


class ProbeBuildError(RuntimeError):
    """The probe guest could not be built (apt, dpkg-deb or depmod failed, module missing)."""


@dataclass(frozen=True)
class ProbeImage:
    """A built probe guest; all paths are files in the cache entry ``directory``."""

    kernel: Path
    initrd: Path
    cmdline: str
    kernel_version: str  # the kernel release (uname -r), e.g. 6.1.0-56-cloud-amd64
    busybox: Path  # the static busybox packed into the initrd (usable on the host, e.g. ping)
    directory: Path


@dataclass(frozen=True)
class _Versions:
    """The packages a build uses; equal versions give the same cache entry."""

    kernel_package: str  # linux-image-<KVER>
    kernel_package_version: str  # its Debian version
    busybox_version: str
    busybox_installed: bool  # take /bin/busybox instead of downloading busybox-static

    @property
    def kernel_release(self) -> str:
        return self.kernel_package.removeprefix("linux-image-")


def build_probe(cache_dir: Path | None = None) -> ProbeImage:
    """The probe guest for the current Debian package versions, built if not cached.

    Guarantees: the returned files are complete and never change afterwards (a new
    package version or guest script gives a new cache entry); concurrent callers,
    in threads or processes, get the same entry and build it at most once.  Runs
    ``apt-get update`` only when apt has no usable package lists or a download
    fails.  Raises :class:`ProbeBuildError` if the guest cannot be built.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    versions = _current_versions(root)
    try:
        return _cached_or_built(root, versions)
    except _DownloadFailed:
        _apt_update()  # the lists may name versions the mirror no longer has
        return _cached_or_built(root, _resolve_and_save(root))


def _cached_or_built(root: Path, versions: _Versions) -> ProbeImage:
    """The cache entry for ``versions``, built under the lock unless it exists."""
    entry = root / _entry_name(versions)
    if not (entry / _MANIFEST).is_file():
        with _locked(root / ".lock"):
            if not (entry / _MANIFEST).is_file():
                _remove_stale_builds(root)
                _build_entry(entry, versions)
    return _image(entry, versions)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/virtplan/probe``, else ``~/.cache/virtplan/probe``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "virtplan" / "probe"


# -- versions ------------------------------------------------------------------------


def _current_versions(root: Path) -> _Versions:
    """The package versions to use; apt is asked only when its state changed since last time."""
    saved = _read_json(root / _RESOLVED)
    if saved is not None and saved.get("stamp") == _apt_stamp():
        with contextlib.suppress(TypeError, KeyError):
            return _Versions(**saved["versions"])
    return _resolve_and_save(root)


def _resolve_and_save(root: Path) -> _Versions:
    """Ask apt for the versions and remember them with the apt state they were read from.

    The stamp is taken before asking, so a concurrent ``apt-get update`` can only
    cause one more resolution later, never a stale answer.
    """
    stamp = _apt_stamp()
    versions = _resolve_versions()
    _write_json_atomic(root / _RESOLVED, {"stamp": stamp, "versions": versions.__dict__})
    return versions


def _apt_stamp() -> str:
    """A digest of the size and mtime of apt's package lists and of dpkg's status file."""
    files = [*sorted(_APT_LISTS.glob("*_Packages*")), _DPKG_STATUS]
    h = hashlib.sha256()
    for path in files:
        with contextlib.suppress(OSError):
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _resolve_versions() -> _Versions:
    """Ask apt (and dpkg) which kernel and busybox packages are current.

    Runs ``apt-get update`` once if apt does not know the kernel metapackage.
    """
    try:
        return _resolve_from_apt()
    except _NoPackageLists:
        _apt_update()
        return _resolve_from_apt()


class _NoPackageLists(ProbeBuildError):
    """apt does not know a package: its lists are missing or stale."""


class _DownloadFailed(ProbeBuildError):
    """``apt-get download`` failed: no network, or lists naming a version the mirror dropped."""


def _resolve_from_apt() -> _Versions:
    installed = _installed_version(BUSYBOX_PACKAGE)
    wanted = [KERNEL_METAPACKAGE] + ([] if installed else [BUSYBOX_PACKAGE])
    stanzas = _apt_show(wanted)
    kernel_package, kernel_package_version = _kernel_dependency(stanzas[KERNEL_METAPACKAGE])
    if kernel_package_version is None:
        kernel_package_version = _apt_show([kernel_package])[kernel_package]["Version"]
    busybox_version = installed or stanzas[BUSYBOX_PACKAGE]["Version"]
    return _Versions(kernel_package, kernel_package_version, busybox_version, busybox_installed=installed is not None)


def _apt_show(packages: list[str]) -> dict[str, dict[str, str]]:
    """``apt-cache show --no-all-versions`` fields by package name (candidate versions)."""
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages], capture_output=True, text=True, env=_ENV
    )
    stanzas: dict[str, dict[str, str]] = {}
    for block in result.stdout.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", block, re.MULTILINE))
        if "Package" in fields:
            stanzas.setdefault(fields["Package"], fields)
    missing = [name for name in packages if name not in stanzas]
    if missing:
        raise _NoPackageLists(f"apt-cache does not know {', '.join(missing)}: {result.stderr.strip()}")
    return stanzas


def _kernel_dependency(stanza: dict[str, str]) -> tuple[str, str | None]:
    """The versioned image package a kernel metapackage depends on, and the pinned version."""
    match = re.search(r"(linux-image-[^\s,(]+)(?:\s*\(=\s*([^)\s]+)\))?", stanza.get("Depends", ""))
    if match is None:
        raise ProbeBuildError(f"{stanza.get('Package')} depends on no linux-image package")
    return match.group(1), match.group(2)


def _installed_version(package: str) -> str | None:
    """The installed version of ``package``, None unless it is fully installed."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}\t${Version}", package], capture_output=True, text=True, env=_ENV
    )
    status, _, version = result.stdout.partition("\t")
    return version if result.returncode == 0 and status.endswith(" installed") else None


def _entry_name(versions: _Versions) -> str:
    """``<KVER>_<kernel version>-busybox_<busybox version>-<digest>``, safe as a file name."""
    digest = hashlib.sha256(f"{FORMAT}\n{CMDLINE}\n{MODULES}\n".encode())
    for name in sorted(_GUEST_FILES):
        digest.update(name.encode() + b"\0" + _guest_file(name) + b"\0")
    name = (
        f"{versions.kernel_release}_{versions.kernel_package_version}"
        f"-busybox_{versions.busybox_version}-{digest.hexdigest()[:12]}"
    )
    return re.sub(r"[^A-Za-z0-9.+_-]", "_", name)


# -- building ------------------------------------------------------------------------


def _build_entry(entry: Path, versions: _Versions) -> None:
    """Build the cache entry in a temporary directory next to it, then rename it into place."""
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=entry.parent))
    try:
        out = work / "out"
        out.mkdir()
        kernel_tree = _unpack(
            _fetch_deb(versions.kernel_package, versions.kernel_package_version, work), work / "kernel"
        )
        busybox = _busybox(versions, work)
        shutil.copyfile(busybox, out / "busybox")
        (out / "busybox").chmod(0o755)
        kver = versions.kernel_release
        vmlinuz = kernel_tree / "boot" / f"vmlinuz-{kver}"
        if not vmlinuz.is_file():
            raise ProbeBuildError(f"{versions.kernel_package} has no boot/vmlinuz-{kver}")
        shutil.copyfile(vmlinuz, out / "vmlinuz")
        modules = _stage_initramfs(work / "root", kernel_tree / "lib" / "modules" / kver, kver, out / "busybox")
        entries = [*cpio.tree_entries(work / "root"), cpio.char_device("dev/console", 5, 1)]
        cpio.write_initramfs(out / "initrd.img", entries)
        manifest = {"format": FORMAT, "cmdline": CMDLINE, "modules": modules, **versions.__dict__}
        (out / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        out.rename(entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _stage_initramfs(root: Path, moddir: Path, kver: str, busybox: Path) -> list[str]:
    """Lay out the initramfs tree under ``root``; return the modules packed (with dependencies)."""
    for name in _EMPTY_DIRS:
        (root / name).mkdir(parents=True)
    _install_busybox(root, busybox)
    for name, (target, mode) in _GUEST_FILES.items():
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_guest_file(name))
        path.chmod(mode)
    available = _module_files(moddir)
    needed = _with_dependencies(MODULES, available, _builtin_modules(moddir))
    target_dir = root / "lib" / "modules" / kver
    for name in needed:
        dest = target_dir / available[name].relative_to(moddir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(available[name], dest)
    for meta in ("modules.builtin", "modules.order"):
        if (moddir / meta).is_file():
            shutil.copyfile(moddir / meta, target_dir / meta)
    loadable = [name for name in MODULES if name in available]
    (root / "etc" / "probe" / "modules").write_text("".join(f"{name}\n" for name in loadable))
    _run([str(busybox), "depmod", "-b", str(root), kver], "busybox depmod")
    if not (target_dir / "modules.dep").is_file():
        raise ProbeBuildError("busybox depmod wrote no modules.dep")
    return needed


def _install_busybox(root: Path, busybox: Path) -> None:
    """``bin/busybox`` plus a symlink for each applet at its usual path."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    (root / "bin" / "busybox").chmod(0o755)
    applets = _run([str(busybox), "--list-full"], "busybox --list-full").split()
    for applet in applets:
        link = root / applet
        if link.name == "busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")


def _module_files(moddir: Path) -> dict[str, Path]:
    """Every ``.ko`` under ``moddir/kernel`` by module name (dashes read as underscores)."""
    return {path.stem.replace("-", "_"): path for path in sorted((moddir / "kernel").rglob("*.ko"))}


def _builtin_modules(moddir: Path) -> set[str]:
    """Modules compiled into the kernel (``modules.builtin``): nothing to pack or load."""
    path = moddir / "modules.builtin"
    lines = path.read_text().split() if path.is_file() else []
    return {Path(line).name.removesuffix(".ko").replace("-", "_") for line in lines}


def _with_dependencies(wanted: tuple[str, ...], available: dict[str, Path], builtin: set[str]) -> list[str]:
    """``wanted`` plus everything they depend on, dependencies first; builtins left out.

    Raises ProbeBuildError for a module that is neither a ``.ko`` file nor builtin.
    """
    ordered: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in ordered or name in builtin or name in chain:
            return
        if name not in available:
            raise ProbeBuildError(f"kernel module {name} not found (needed by {' <- '.join(chain) or 'the probe'})")
        for dep in _module_depends(available[name]):
            visit(dep, (*chain, name))
        ordered.append(name)

    for name in wanted:
        visit(name, ())
    return ordered


def _module_depends(path: Path) -> list[str]:
    """The ``depends=`` entry of a module's ``.modinfo`` section (NUL-separated strings)."""
    match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
    if match is None:
        return []
    return [name.replace("-", "_") for name in match.group(1).decode().split(",") if name]


def _busybox(versions: _Versions, work: Path) -> Path:
    """The static busybox: the installed one, or unpacked from the busybox-static package."""
    if versions.busybox_installed and _INSTALLED_BUSYBOX.is_file():
        return _INSTALLED_BUSYBOX
    tree = _unpack(_fetch_deb(BUSYBOX_PACKAGE, versions.busybox_version, work), work / "busybox")
    for candidate in (tree / "bin" / "busybox", tree / "usr" / "bin" / "busybox"):
        if candidate.is_file():
            return candidate
    raise ProbeBuildError(f"{BUSYBOX_PACKAGE} {versions.busybox_version} contains no busybox binary")


def _fetch_deb(package: str, version: str, work: Path) -> Path:
    """The ``.deb`` of ``package=version``: from apt's archive cache, else ``apt-get download``."""
    filename = f"{package}_{version.replace(':', '%3a')}_{ARCH}.deb"
    cached = _APT_ARCHIVES / filename
    if cached.is_file():
        return cached
    downloads = work / "debs"
    downloads.mkdir(exist_ok=True)
    command = ["apt-get", "download", f"{package}={version}"]
    try:
        _run(command, "apt-get download", cwd=downloads)
    except ProbeBuildError as err:
        raise _DownloadFailed(str(err)) from err
    debs = sorted(downloads.glob(f"{package}_*.deb"))
    if not debs:
        raise ProbeBuildError(f"apt-get download {package}={version} produced no .deb")
    return debs[0]


def _unpack(deb: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` (no install, no maintainer scripts); returns ``dest``."""
    _run(["dpkg-deb", "-x", str(deb), str(dest)], f"dpkg-deb -x {deb.name}")
    return dest


def _apt_update() -> None:
    _run(["apt-get", "update"], "apt-get update")


def _image(entry: Path, versions: _Versions) -> ProbeImage:
    manifest = json.loads((entry / _MANIFEST).read_text())
    return ProbeImage(
        kernel=entry / "vmlinuz",
        initrd=entry / "initrd.img",
        cmdline=manifest["cmdline"],
        kernel_version=versions.kernel_release,
        busybox=entry / "busybox",
        directory=entry,
    )


# -- helpers -------------------------------------------------------------------------


def _guest_file(name: str) -> bytes:
    return resources.files("virtplan_lab.probe").joinpath("guest", name).read_bytes()


def _run(command: list[str], what: str, cwd: Path | None = None) -> str:
    """Run ``command``; its stdout, or ProbeBuildError carrying the tail of stderr."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=_ENV)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
        raise ProbeBuildError(f"{what} failed (exit {result.returncode}): {tail}")
    return result.stdout


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_builds(root: Path) -> None:
    """Remove temporary build directories of builders that died (call with the lock held)."""
    for stale in root.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json_atomic(path: Path, data: object) -> None:
    """Write ``path`` via a temporary file and rename, so readers see old or new, never half."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)
