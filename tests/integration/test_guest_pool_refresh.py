"""Refreshing a pool while libvirt builds another volume in it: virtplan waits, never fails.

libvirt refuses to refresh a pool while any volume of it is being built, cloned or wiped
("internal error: pool 'P' has asynchronous jobs running."). virtplan refreshes pools
after uploading a volume's ``source``, before deleting a VM's console log and before
reading one (``virtplan show``, ``virtplan console-log``); each of those failed whenever
another volume of the same pool was being created at that moment, by the same apply (its
workers create volumes in parallel: an apply uploading the probe kernel while creating
the VMs' qcow2 disks in the same pool failed about one time in three here) or by anyone
else. ``virtplan.hosts.pools.refresh_pool`` now waits such jobs out; these tests keep it so.

The collision is made certain: a 4 GiB clone runs in the pool meanwhile (and the pool is
checked to be busy). No guest boots in this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import libvirt
import pytest
from test_guest_support import wait_until

from virtplan.engine import Engine
from virtplan.hosts.console import read_console_log
from virtplan.model import Stack, load_stack
from virtplan_lab.testbed import PrivateHost

POOL = "busy-pool"
STACK = """
from virtplan import VM, Host, Pool, Volume
Host("local", uri="qemu:///system", domain_type="qemu")
pool = Pool({pool!r}, path={path!r})
if {image!r}:
    Volume("image.raw", pool=pool, source={image!r}, format="raw")
if {vm!r}:
    VM("busy-vm", memory="64MiB", disks=[Volume("busy-vm.qcow2", pool=pool, size="16MiB")], state="stopped")
"""
#: libvirt copies a sparse 4 GiB volume in 2 to 12 s here: far longer than virtplan needs
#: to reach its refresh, far shorter than the 30 s the fixed refresh waits.
CLONE_BYTES = 4 * 1024**3
BUSY = "has asynchronous jobs running"


class Bed:
    """One test's stack on the module's host; its pool can be made busy on demand."""

    def __init__(self, host: PrivateHost, directory: Path) -> None:
        self.host, self.directory = host, directory
        self.conn = host.connect()

    def declare(self, image: Path | None = None, vm: bool = False) -> Stack:
        program = self.directory / "busypool.py"
        path = self.host.workdir / POOL
        program.write_text(STACK.format(pool=POOL, path=str(path), image=str(image or ""), vm=vm))
        return load_stack(program, {"local": self.host.uri})

    def apply(self, stack: Stack) -> None:
        with Engine(stack) as engine:
            plan, observation = engine.plan()
            engine.apply(plan, observation)

    @contextmanager
    def busy(self) -> Iterator[None]:
        """The pool has a job running: libvirt copies a 4 GiB (sparse) volume in it meanwhile."""
        pool = self.conn.storagePoolLookupByName(POOL)
        big = pool.createXML(
            f"<volume><name>big.raw</name><capacity>{CLONE_BYTES}</capacity><allocation>0</allocation>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        clone_xml = f"<volume><name>clone.raw</name><capacity>{CLONE_BYTES}</capacity><target><format type='raw'/></target></volume>"

        def clone() -> None:
            other = self.host.connect()
            try:
                other.storagePoolLookupByName(POOL).createXMLFrom(clone_xml, big, 0)
            finally:
                other.close()

        cloner = threading.Thread(target=clone)
        cloner.start()
        try:
            # libvirt lists the new volume as soon as its build (the copy) starts.
            assert wait_until(lambda: "clone.raw" in pool.listVolumes(), 30, interval=0.01)
            with pytest.raises(libvirt.libvirtError, match=BUSY):
                pool.refresh(0)  # the pool really is busy now
            yield
        finally:
            cloner.join()
            for name in ("clone.raw", "big.raw"):
                pool.storageVolLookupByName(name).delete(0)

    def download(self, name: str) -> bytes:
        volume = self.conn.storagePoolLookupByName(POOL).storageVolLookupByName(name)
        stream = self.conn.newStream(0)
        volume.download(stream, 0, 0, 0)
        chunks: list[bytes] = []
        stream.recvAll(lambda _stream, data, acc: acc.append(data) or len(data), chunks)
        stream.finish()
        return b"".join(chunks)


@pytest.fixture(scope="module")
def directory(tmp_path_factory: Any) -> Path:
    """The module's stack program and state (one stack, re-declared by each test)."""
    return Path(tmp_path_factory.mktemp("busypool"))


@pytest.fixture
def bed(private_host: PrivateHost, directory: Path) -> Iterator[Bed]:
    bed = Bed(private_host, directory)
    try:
        yield bed
        bed.apply(bed.declare())  # leave only the (empty) pool for the next test
    finally:
        bed.conn.close()


def test_uploading_an_image_waits_for_other_jobs_in_its_pool(bed: Bed) -> None:
    image = bed.directory / "image.raw"
    image.write_bytes(os.urandom(1024 * 1024))
    bed.apply(bed.declare())  # the pool alone
    with bed.busy():
        bed.apply(bed.declare(image=image))
    assert bed.download("image.raw") == image.read_bytes()


def test_deleting_a_vm_waits_for_other_jobs_in_its_pool(bed: Bed) -> None:
    bed.apply(bed.declare(vm=True))
    with bed.busy():
        bed.apply(bed.declare())  # deletes the VM, its console log and its disk
    assert "busy-vm" not in [d.name() for d in bed.conn.listAllDomains()]
    assert "busy-vm.qcow2" not in bed.conn.storagePoolLookupByName(POOL).listVolumes()


def test_reading_a_console_log_waits_for_other_jobs_in_its_pool(bed: Bed) -> None:
    stack = bed.declare(vm=True)
    bed.apply(stack)
    [vm] = stack.vms
    with bed.busy():
        text = read_console_log(bed.conn, vm)
    assert text == ""  # never started: nothing logged yet
