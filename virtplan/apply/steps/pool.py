"""Storage pools: define and start (building the directory only when it is missing),
change autostart and activity, stop and undefine (removing the directory only if virtplan
created it and it is empty)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from virtplan.apply.claims import with_uuid
from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.records import Applied, ChooseUuid, Forget, Intent, Recorded
from virtplan.apply.steps.shell import file_name, heredoc, q
from virtplan.hosts.pools import refresh_pool
from virtplan.model import Pool
from virtplan.plan.changes import ResourceChange


# -- operations -------------------------------------------------------------------------------
@dataclass(frozen=True)
class DefinePool(Operation):
    pool: Pool

    def run(self, rt: Runtime) -> None:
        xml = rt.ctx.renderer.pool_xml(self.pool)
        if "uuid" in rt.facts:  # chosen by virtplan: the intent names it, so the pool is provably ours
            xml = with_uuid(xml, rt.facts["uuid"])
        rt.remember("pool", self.pool.name, rt.conn.storagePoolDefineXML(xml, 0))
        rt.settled()

    def shell(self, ctx: Context) -> list[str]:
        path = file_name("pool", self.pool.name) + ".xml"
        return [heredoc(path, ctx.renderer.pool_xml(self.pool)), f"virsh pool-define {q(path)}"]


@dataclass(frozen=True)
class StartPool(Operation):
    """Start a pool; with `build_if_missing`, a start that fails (the directory is missing)
    builds the directory and starts again, and the run records that virtplan created it."""

    name: str
    build_if_missing: bool = False

    def run(self, rt: Runtime) -> None:
        import libvirt

        pool = rt.handle("pool", self.name)
        if not self.build_if_missing:
            pool.create()
            return
        try:
            pool.create()
        except libvirt.libvirtError:
            pool.build(0)  # virtplan creates (and may remove) the directory
            rt.facts["created_dir"] = True
            pool.create()

    def shell(self, ctx: Context) -> list[str]:
        name = q(self.name)
        if not self.build_if_missing:
            return [f"virsh pool-start {name}"]
        return [f"virsh pool-start {name} || {{ virsh pool-build {name} && virsh pool-start {name}; }}"
                "  # builds (creates) the directory only if it is missing"]  # fmt: skip


@dataclass(frozen=True)
class StopPool(Operation):
    """Stop a pool; with `remove_dir`, also remove its directory, which only happens while
    it is empty (the run form counts the volumes first; in the shell form libvirt refuses
    to remove a directory that holds files)."""

    name: str
    remove_dir: bool = False

    def run(self, rt: Runtime) -> None:
        pool = rt.handle("pool", self.name)
        empty = False
        if self.remove_dir:
            refresh_pool(pool)
            empty = pool.numOfVolumes() == 0
        pool.destroy()
        if empty:
            pool.delete(0)

    def shell(self, ctx: Context) -> list[str]:
        out = [f"virsh pool-destroy {q(self.name)}"]
        if self.remove_dir:
            out.append(f"virsh pool-delete {q(self.name)}  # removes the empty directory virtplan created")
        return out


@dataclass(frozen=True)
class UndefinePool(Operation):
    name: str

    def run(self, rt: Runtime) -> None:
        rt.handle("pool", self.name).undefine()

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh pool-undefine {q(self.name)}"]


@dataclass(frozen=True)
class PoolAutostart(Operation):
    name: str
    on: bool

    def run(self, rt: Runtime) -> None:
        rt.handle("pool", self.name).setAutostart(1 if self.on else 0)

    def shell(self, ctx: Context) -> list[str]:
        return [f"virsh pool-autostart {'' if self.on else '--disable '}{q(self.name)}"]


# -- steps ------------------------------------------------------------------------------------
def create(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    pool: Pool = ctx.resource(change)
    yield ChooseUuid(change.address)
    yield Intent(change.address, "pool")
    yield DefinePool(pool)
    yield StartPool(pool.name, build_if_missing=True)
    if pool.autostart:
        yield PoolAutostart(pool.name, True)
    yield Recorded(change)


def update(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    obj = ctx.observed(change)
    for fc in change.changes:
        if fc.field == "active" and fc.after and not (obj and obj.spec.get("active")):
            yield StartPool(change.key)
        elif fc.field == "autostart":
            yield PoolAutostart(change.key, bool(fc.after))
    yield Applied(change)


def delete(change: ResourceChange, ctx: Context) -> Iterator[Operation]:
    obj = ctx.observed(change)
    if obj is not None and obj.spec.get("active"):
        record = ctx.records.get(change.address) or {}
        yield StopPool(change.key, remove_dir=bool(record.get("created_dir")) and not _volumes_left(change, ctx))
    yield UndefinePool(change.key)
    yield Forget(change.address)


def _volumes_left(change: ResourceChange, ctx: Context) -> list[str]:
    """The pool's volumes this plan does not delete (itself or with their VM)."""
    host = ctx.host
    left = []
    for v in host.of_kind("volume"):
        address = f"{host.name}/volume/{v.key}"
        if not v.key.startswith(change.key + "/") or address in ctx.deleted:
            continue
        record = ctx.records.get(address) or {}
        if (record.get("seed_of") or record.get("log_of")) in ctx.deleted:
            continue  # a seed or console log, deleted with its VM
        left.append(v.key)
    return left
