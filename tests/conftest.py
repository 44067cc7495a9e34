"""Shared fixtures: private libvirt hosts (real libvirtd + QEMU, see ``virtplan_lab.testbed``).

Tests that use a host fixture are marked ``integration`` automatically. Where a
private host cannot run (not root, libvirt or QEMU missing) they fail with the
reason, so CI can never pass by skipping them; VIRTPLAN_SKIP_INTEGRATION=1 skips
them deliberately on a machine that cannot run them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from virtplan_lab.probe import ProbeImage, build_probe
from virtplan_lab.testbed import PrivateHost, missing_prereqs

#: libvirt's probed QEMU capabilities, shared by all test hosts (libvirt re-probes stale ones).
QEMU_CAPS_CACHE = Path("/var/tmp/virtplan-qemu-caps")

#: Fixtures that start private hosts; tests using them get the ``integration`` marker.
HOST_FIXTURES = frozenset({"private_host", "two_hosts", "host_uri", "make_private_host", "host_workdir"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: needs real private libvirt hosts (root, libvirtd, QEMU)")


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
