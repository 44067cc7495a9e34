"""The volumes a VM owns besides its disks: its NoCloud seed (written on create and when
cloud-init changes) and its console log (claimed when the VM is defined); both go with it."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from virtplan.apply.claims import AppearedMeanwhile, create_volume, is_ours
from virtplan.apply.steps.base import CHUNK, Context, Operation, Runtime
from virtplan.apply.steps.shell import SENSITIVE, file_name, heredoc, q
from virtplan.documents import fragments
from virtplan.documents.render import console_log_path
from virtplan.documents.seed import build_seed_iso
from virtplan.hosts.fetch import again_if_lost
from virtplan.hosts.pools import refresh_pool
from virtplan.model import VM, Secret
from virtplan.model.resources import RAW_DOCUMENTS

_SEED_SECRET = re.compile(r"\(sensitive:[0-9a-f]+\)")
_refresh_lock = threading.Lock()


@dataclass(frozen=True)
class WriteSeed(Operation):
    """(Re)write the VM's NoCloud seed volume, recorded before it is created. The run form
    builds the ISO in memory; the shell form writes the files and runs genisoimage."""

    vm: VM

    def address(self, ctx: Context) -> str:
        assert self.vm.seed_pool is not None
        return f"{ctx.host.name}/volume/{self.vm.seed_pool.name}/{self.vm.seed_volume_name}"

    def run(self, rt: Runtime) -> None:
        import libvirt

        assert self.vm.seed_pool is not None
        store, uri, address = rt.ctx.store, rt.ctx.host.uri, self.address(rt.ctx)
        name = self.vm.seed_volume_name
        data = build_seed_iso(rt.ctx.renderer.seed_files(self.vm))
        pool = rt.handle("pool", self.vm.seed_pool.name)
        try:
            old = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                raise
        else:
            if not is_ours(store, uri, address, old):
                raise AppearedMeanwhile(f"{address}: a volume named {name!r} exists and is not this stack's seed; "
                                        "virtplan leaves it alone (remove or rename it)")  # fmt: skip
            old.delete(0)
            store.forget(uri, address)

        def make() -> Any:
            vol = pool.createXML(fragments.volume(name, len(data), "raw"), 0)
            stream = rt.conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            view = memoryview(data)
            offset = 0
            while offset < len(data):
                offset += stream.send(bytes(view[offset : offset + CHUNK]))
            stream.finish()
            return vol

        expect = {"format": "raw", "backing": None}
        create_volume(store, uri, address, pool, name, make, expect, upload=True, seed_of=self.vm.address)

    def shell(self, ctx: Context) -> list[str]:
        vm = self.vm
        assert vm.seed_pool is not None
        folder = file_name("seed", vm.name)
        iso = vm.seed_volume_name
        files = ctx.renderer.seed_files(vm, reveal_secrets=False)
        out = [f"mkdir -p {q(folder)}"]
        ci = vm.cloud_init
        if ci is not None and ci.password is not None:
            out.append(f"# {SENSITIVE} in {folder}/user-data stands for the password: put the real one there")
        if ci is not None:
            for doc in (n for n in RAW_DOCUMENTS if isinstance(getattr(ci, n), Secret)):
                name = doc.replace("_", "-")
                out.append(f"# {SENSITIVE} in {folder}/{name} stands for the stack's raw {name} (a secret): "
                           "put the real one there")  # fmt: skip
        for name, content in sorted(files.items()):
            out.append(heredoc(f"{folder}/{name}", _SEED_SECRET.sub(SENSITIVE, content)))
        paths = " ".join(q(f"{folder}/{n}") for n in sorted(files))
        pool = q(vm.seed_pool.name)
        return [
            *out,
            f"genisoimage -quiet -output {q(folder + '.iso')} -volid cidata -joliet -rock {paths}",
            f"virsh vol-delete --pool {pool} {q(iso)} 2>/dev/null || true  # an old seed, if any",
            f'virsh vol-create-as {pool} {q(iso)} "$(stat -c %s {q(folder + ".iso")})" --format raw',
            f"virsh vol-upload --pool {pool} {q(iso)} {q(folder + '.iso')}",
        ]


@dataclass(frozen=True)
class ClaimConsoleLog(Operation):
    """Record the console log file (written by libvirt's virtlogd) as the VM's own."""

    vm: VM

    def run(self, rt: Runtime) -> None:
        assert self.vm.seed_pool is not None
        address = f"{rt.ctx.host.name}/volume/{self.vm.seed_pool.name}/{self.vm.console_log_name}"
        # virtlogd creates the file where the domain definition says: that path is the proof
        rt.ctx.store.put(rt.ctx.host.uri, address, kind="volume", pending=False, id=console_log_path(self.vm),
                         log_of=self.vm.address)  # fmt: skip

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class DeleteVmVolume(Operation):
    """Delete a volume a VM owns besides its disks (its seed or console log) and forget it.
    A console log is known to libvirt only after a pool refresh and may not exist; the run
    form also tolerates a seed already gone."""

    address: str
    log: bool

    def run(self, rt: Runtime) -> None:
        import libvirt

        pool_name, _, name = self.address.split("/", 2)[2].partition("/")
        try:
            pool = rt.handle("pool", pool_name)
            if self.log:
                _refresh_once(rt, pool_name, pool)  # libvirt learns of files virtlogd created only on refresh
            again_if_lost(lambda: pool.storageVolLookupByName(name).delete(0))
        except libvirt.libvirtError as exc:
            gone = (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL)
            if exc.get_error_code() not in (*gone, libvirt.VIR_ERR_OPERATION_INVALID):
                raise
        rt.ctx.store.forget(rt.ctx.host.uri, self.address)

    def shell(self, ctx: Context) -> list[str]:
        pool, _, name = self.address.split("/", 2)[2].partition("/")
        if self.log:
            return [f"virsh pool-refresh {q(pool)}",
                    f"virsh vol-delete --pool {q(pool)} {q(name)} 2>/dev/null || true  # console log"]  # fmt: skip
        return [f"virsh vol-delete --pool {q(pool)} {q(name)}"]


def _refresh_once(rt: Runtime, pool_name: str, pool: Any) -> None:
    """Refresh `pool` once per apply run before its console logs are deleted. A refresh
    rescans every file of the pool (one probe each), so one per deleted VM made destroying
    N VMs cost N x N probes. Once is enough: the logs of the VMs a run deletes were created
    when those VMs started, before the run (a log that is not there is tolerated)."""
    with _refresh_lock:
        done: set[str] = getattr(rt.run, "_refreshed_log_pools", set())
        if pool_name not in done:
            refresh_pool(pool)
            done.add(pool_name)
            setattr(rt.run, "_refreshed_log_pools", done)  # noqa: B010 - per-run state, as apply.protection keeps
