"""virtplan's own bookkeeping as operations: the intent written before a pool or volume is
created (a crash never leaves one nobody owns), the record once an object exists, and
forgetting it once it is gone. libvirt has no equivalent: in the shell form, a pool's or
volume's record is a comment saying what virtplan records; the rest print nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virtplan.apply.claims import AppearedMeanwhile, confirm_volume, fresh_uuid, volume_identity
from virtplan.apply.steps.base import Context, Operation, Runtime
from virtplan.apply.steps.shell import comment
from virtplan.hosts.fetch import again_if_lost
from virtplan.plan.changes import ResourceChange


@dataclass(frozen=True)
class ChooseUuid(Operation):
    """Give the object about to be created a UUID of virtplan's choosing, so its definition
    carries it: libvirt refuses a define whose name exists with another UUID, so a create
    never takes over an object that appeared since the plan (see virtplan.apply.claims)."""

    address: str

    def run(self, rt: Runtime) -> None:
        rt.facts["uuid"] = fresh_uuid(rt.ctx.renderer, self.address)

    def shell(self, ctx: Context) -> list[str]:
        return []  # the commands let libvirt choose


@dataclass(frozen=True)
class Intent(Operation):
    """Record that `address` is about to be created (never proof of ownership by itself);
    dropped again if the create fails. A pool's intent names the UUID it will have, a
    volume's the format and backing file it will have (`expect`)."""

    address: str
    kind: str
    expect: dict[str, Any] | None = None
    upload: bool = False
    image: dict[str, Any] | None = None  # a URL source's facts, kept with the volume's record

    def run(self, rt: Runtime) -> None:
        store, uri = rt.ctx.store, rt.ctx.host.uri
        fields: dict[str, Any] = {"kind": self.kind, "pending": True}
        if self.image is not None:
            fields["image"] = self.image
        if self.kind == "pool":
            fields["id"] = rt.facts.get("uuid")
        if self.expect is not None:
            fields["expect"] = self.expect
        fields["stage"] = "upload" if self.upload else None
        store.put(uri, self.address, **fields)
        rt.on_failure(lambda: store.forget(uri, self.address))

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class EnsureAbsent(Operation):
    """Right before a volume is created: none of that name appeared since the plan (libvirt
    would refuse the create anyway; this says why, and leaves the foreign one alone)."""

    address: str
    key: str  # "pool/name"

    def run(self, rt: Runtime) -> None:
        import libvirt

        pool, _, name = self.key.partition("/")
        try:
            again_if_lost(lambda: rt.handle("pool", pool).storageVolLookupByName(name))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return
            raise
        raise AppearedMeanwhile(
            f"{self.address}: a volume named {name!r} appeared on the host after the plan was made; virtplan did "
            "not create it and leaves it alone (rename it, or run plan again to see it)"
        )

    def shell(self, ctx: Context) -> list[str]:
        return []


@dataclass(frozen=True)
class Recorded(Operation):
    """The change's object exists: confirm it as this stack's with the identity it has
    (a pool's UUID; a volume's path, format, size and backing file; a domain's or network's
    UUID) and remember the spec applied (for `virtplan drift`)."""

    change: ResourceChange

    def run(self, rt: Runtime) -> None:
        c, store, uri = self.change, rt.ctx.store, rt.ctx.host.uri
        if c.kind == "pool":
            uuid = rt.handle("pool", c.key).UUIDString()
            store.put(uri, c.address, id=uuid, pending=False, created_dir=rt.facts.get("created_dir", False))
        elif c.kind == "volume":
            vol = rt.handle("volume", c.key)
            store.put(uri, c.address, id=vol.path(), pending=False, stage=None, expect=volume_identity(vol))
        else:
            store.put(uri, c.address, kind=c.kind, id=rt.handle(c.kind, c.key).UUIDString(), pending=False)
        rt.settled()
        rt.run.note_applied(c)

    def shell(self, ctx: Context) -> list[str]:
        if self.change.kind not in ("pool", "volume"):
            return []  # domains and networks carry virtplan's mark in their XML
        return [
            comment(f"(virtplan records {self.change.address} as owned by stack {ctx.stack.key!r} in its records on "
                    f"the host; libvirt cannot tag {self.change.kind}s)")
        ]  # fmt: skip


@dataclass(frozen=True)
class Reconfirmed(Operation):
    """A volume virtplan changed (grown): its record takes the identity it has now."""

    address: str
    key: str

    def run(self, rt: Runtime) -> None:
        confirm_volume(rt.ctx.store, rt.ctx.host.uri, self.address, rt.handle("volume", self.key))

    def shell(self, ctx: Context) -> list[str]:
        return []


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
