"""Shared fixtures: private libvirt hosts (real libvirtd + QEMU, see ``virtplan_lab.testbed``).

Tests that use a host fixture are marked ``integration`` automatically. Where a
private host cannot run (not root, libvirt or QEMU missing) they fail with the
reason, so CI can never pass by skipping them; VIRTPLAN_SKIP_INTEGRATION=1 skips
them deliberately on a machine that cannot run them.

Hosts that are machines on a network (``virtplan_lab.lab``): ``netlab`` is this
process's lab network (one per pytest-xdist worker, each on its own 10.250.K.0/24);
``ssh_host`` and ``tls_host`` are hosts on it reached over ``qemu+ssh://`` (a real
sshd, key authentication, verified host keys) and ``qemu+tls://`` (a CA and
certificates made for the run); ``lab_hosts(n, ssh=..., tls=...)`` starts n more.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.figures import FIGURES_ENV, figures_dir
from virtplan_lab.lab import Lab
from virtplan_lab.probe import ProbeImage, build_probe
from virtplan_lab.testbed import PrivateHost, missing_prereqs

#: libvirt's probed QEMU capabilities, shared by all test hosts (libvirt re-probes stale ones).
QEMU_CAPS_CACHE = Path("/var/tmp/virtplan-qemu-caps")

#: Fixtures that start private hosts; tests using them get the ``integration`` marker.
HOST_FIXTURES = frozenset(
    {
        "private_host",
        "two_hosts",
        "host_uri",
        "make_private_host",
        "host_workdir",
        "netlab",
        "ssh_host",
        "tls_host",
        "lab_hosts",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real private libvirt hosts (root, libvirtd, QEMU)")
    # figures: one folder per run, made by the controller; its workers (and any pytest a test
    # starts) inherit it through the environment
    if not hasattr(config, "workerinput") and FIGURES_ENV not in os.environ:
        os.environ[FIGURES_ENV] = tempfile.mkdtemp(prefix="virtplan-figures-")
        config.stash[_FIGURES_OWNER] = True


_FIGURES_OWNER = pytest.StashKey[bool]()


def pytest_unconfigure(config: pytest.Config) -> None:
    if config.stash.get(_FIGURES_OWNER, False):  # the process that made the folder removes it
        shutil.rmtree(os.environ.pop(FIGURES_ENV), ignore_errors=True)


# -- figures: suites that count what they tried print it at the end of the run --------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Figures of two kinds: files the suites write (hostile input) and properties tests record."""
    _figures_from_files(terminalreporter, config)
    _figures_from_reports(terminalreporter)


def _figures_from_files(terminalreporter: object, config: pytest.Config) -> None:
    import json

    folder = figures_dir()
    if hasattr(config, "workerinput") or not folder.is_dir():
        return
    files = sorted(folder.glob("*.json"))
    if not files:
        return
    write = terminalreporter.write_line  # type: ignore[attr-defined]
    terminalreporter.section("virtplan figures")  # type: ignore[attr-defined]
    for path in files:
        figures = json.loads(path.read_text())
        write(f"{path.stem}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def _figures_from_reports(terminalreporter: pytest.TerminalReporter) -> None:
    """The figures tests record with `record_property("virtplan-figures", row)` (the fault
    suite, tests/faults), as one table per kind of test, after the run (xdist workers too)."""
    rows: list[dict[str, object]] = []
    for status in ("passed", "failed"):
        for report in terminalreporter.stats.get(status, []):
            rows += [value for name, value in getattr(report, "user_properties", []) if name == "virtplan-figures"]
    if not rows:
        return
    terminalreporter.section("virtplan figures")
    for kind in dict.fromkeys(str(r.get("test")) for r in rows):
        group = [r for r in rows if str(r.get("test")) == kind]
        columns = list(dict.fromkeys(k for r in group for k in r if k != "test"))
        table = [[str(r.get(c, "")) for c in columns] for r in group]
        widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
        terminalreporter.write_line(f"{kind}:")
        terminalreporter.write_line("  " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        terminalreporter.write_line("  " + "-+-".join("-" * w for w in widths))
        for row in table:
            terminalreporter.write_line("  " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HOST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _unavailable(reason: str) -> None:
    """Fail with the reason (CI must never pass by skipping); skip only when asked to."""
    if os.environ.get("VIRTPLAN_SKIP_INTEGRATION") == "1":
        pytest.skip(reason)
    pytest.fail(reason + "; set VIRTPLAN_SKIP_INTEGRATION=1 to skip these tests deliberately")


@pytest.fixture(scope="session")
def probe_image() -> ProbeImage:
    """The probe guest (kernel + initramfs built from Debian packages, cached)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        _unavailable("the probe guest is built from Debian packages: needs apt-get and dpkg-deb")
    return build_probe()


@contextmanager
def fresh_workdir() -> Iterator[Path]:
    """A new short workdir for a private host (skips the test where none can run); removed after."""
    problems = missing_prereqs()
    if problems:
        _unavailable(f"no private libvirt host here: {'; '.join(problems)} (scripts/setup.sh installs what is missing)")
    workdir = Path(tempfile.mkdtemp(prefix="vp-", dir="/var/tmp"))  # short: socket paths
    try:
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running_host(name: str) -> Iterator[PrivateHost]:
    """A started PrivateHost in a fresh workdir; stopped and removed on exit."""
    with fresh_workdir() as workdir:
        host = PrivateHost(workdir, name, qemu_caps_cache=QEMU_CAPS_CACHE)
        try:
            host.start()
            yield host
        finally:
            host.stop()


@pytest.fixture(scope="module")
def private_host() -> Iterator[PrivateHost]:
    """One fresh private host per test module."""
    with running_host("host") as host:
        yield host


@pytest.fixture(scope="module")
def two_hosts() -> Iterator[tuple[PrivateHost, PrivateHost]]:
    """Two fresh private hosts running at the same time, per test module."""
    with running_host("host-a") as a, running_host("host-b") as b:
        yield a, b


@pytest.fixture
def host_uri(private_host: PrivateHost) -> str:
    """The libvirt URI of the module's private host."""
    return private_host.uri


@pytest.fixture
def host_workdir() -> Iterator[Path]:
    """A fresh short workdir for a PrivateHost the test manages itself."""
    with fresh_workdir() as workdir:
        yield workdir


@pytest.fixture
def make_private_host() -> Iterator[Callable[[str], PrivateHost]]:
    """Factory for hosts owned by one test: ``make_private_host(name)`` starts one.

    Every host it made is stopped and its workdir removed when the test ends.
    """
    with ExitStack() as stack:
        yield lambda name: stack.enter_context(running_host(name))


# -- hosts on a lab network, reached over ssh and TLS ------------------------------------


@pytest.fixture(scope="session")
def netlab() -> Iterator[Lab]:
    """This process's lab network with its ssh and TLS client credentials.

    For the whole session the lab's ``ssh`` wrapper comes first on PATH, so plain
    ``qemu+ssh://root@<address>/system`` URIs work here and in subprocesses (the
    virtplan CLI), with the lab's key and known_hosts, as a user's ~/.ssh/config would.
    """
    problems = missing_prereqs(remote=True)
    if problems:
        _unavailable(f"no lab network here: {'; '.join(problems)} (scripts/setup.sh installs what is missing)")
    with Lab(qemu_caps_cache=QEMU_CAPS_CACHE) as lab:
        patch = pytest.MonkeyPatch()
        patch.setenv("PATH", lab.env()["PATH"])
        try:
            yield lab
        finally:
            patch.undo()


@contextmanager
def lab_host(lab: Lab, *, ssh: bool, tls: bool) -> Iterator[PrivateHost]:
    host = lab.add_host(ssh=ssh, tls=tls)
    try:
        yield host
    finally:
        lab.remove_host(host)


@pytest.fixture(scope="module")
def ssh_host(netlab: Lab) -> Iterator[PrivateHost]:
    """A host on the lab network with its own sshd: ``ssh_host.ssh_uri``, per test module."""
    with lab_host(netlab, ssh=True, tls=False) as host:
        yield host


@pytest.fixture(scope="module")
def tls_host(netlab: Lab) -> Iterator[PrivateHost]:
    """A host on the lab network with libvirtd listening for TLS: ``tls_host.tls_uri``, per test module."""
    with lab_host(netlab, ssh=False, tls=True) as host:
        yield host


@pytest.fixture
def lab_hosts(netlab: Lab) -> Iterator[Callable[..., list[PrivateHost]]]:
    """Factory: ``lab_hosts(n, ssh=True, tls=False, prefix=None)`` starts n hosts at once.

    Every host it started is stopped, and its address freed, when the test ends.
    """
    started: list[PrivateHost] = []

    def start(count: int, *, ssh: bool = True, tls: bool = False, prefix: str | None = None) -> list[PrivateHost]:
        hosts = netlab.start_hosts(count, ssh=ssh, tls=tls, prefix=prefix)
        started.extend(hosts)
        return hosts

    try:
        yield start
    finally:
        for host in started:
            netlab.remove_host(host)
