"""virtplan's own bookkeeping as operations: the intent written before a pool or volume is
created (a crash never leaves one nobody owns), the record once an object exists, and
forgetting it once it is gone. libvirt has no equivalent: in the shell form, a pool's or
volume's record is a comment saying what virtplan records; the rest print nothing."""

from __future__ import annotations

from dataclasses import dataclass

from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.plan.changes import ResourceChange


@dataclass(frozen=True)
class Intent(Operation):
    """Record `address` as this stack's before it exists (proof of ownership comes later)."""

    address: str
    kind: str

    def run(self, rt: Runtime) -> None:
        rt.ctx.store.put(rt.ctx.host.uri, self.address, kind=self.kind, pending=True)

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class Recorded(Operation):
    """The change's object exists: record it with its libvirt identity (UUID; a volume's
    path) and remember the spec applied (for `virtplan drift`)."""

    change: ResourceChange

    def run(self, rt: Runtime) -> None:
        c, store, uri = self.change, rt.ctx.store, rt.ctx.host.uri
        if c.kind == "pool":
            uuid = rt.handle("pool", c.key).UUIDString()
            store.put(uri, c.address, id=uuid, pending=False, created_dir=rt.facts.get("created_dir", False))
        elif c.kind == "volume":
            store.put(uri, c.address, id=rt.handle("volume", c.key).path(), pending=False)
        else:
            store.put(uri, c.address, kind=c.kind, id=rt.handle(c.kind, c.key).UUIDString(), pending=False)
        rt.run.note_applied(c)

    def shell(self, ctx: Context) -> list[str]:
        if self.change.kind not in ("pool", "volume"):
            return []  # domains and networks carry virtplan's mark in their XML
        return [
            f"# (virtplan records {self.change.address} as owned by stack {ctx.stack.name!r} in "
            f"{ctx.store.path.name}; libvirt cannot tag {self.change.kind}s)"
        ]


@dataclass(frozen=True)
class Applied(Operation):
    """Remember the spec applied to an object changed in place (for `virtplan drift`)."""

    change: ResourceChange

    def run(self, rt: Runtime) -> None:
        rt.run.note_applied(self.change)

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class Forget(Operation):
    """The object at `address` is gone: drop its record."""

    address: str

    def run(self, rt: Runtime) -> None:
        rt.ctx.store.forget(rt.ctx.host.uri, self.address)

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class ForgetIdentity(Operation):
    """Render what follows as a new object (a replacement keeps neither UUID nor MACs).
    This changes the renderer, in both forms; the virsh view restores it afterwards."""

    address: str

    def run(self, rt: Runtime) -> None:
        rt.ctx.renderer.identities.pop(self.address, None)

    def shell(self, ctx: Context) -> list[str]:
        ctx.renderer.identities.pop(self.address, None)
        return []
