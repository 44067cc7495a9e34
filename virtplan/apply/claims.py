"""How apply makes an object provably its own (see `virtplan.plan.ownership`).

- Domains, networks and pools are defined with a UUID virtplan chose: a define never
  takes over an object of the same name that appeared since the plan (libvirt refuses a
  name that exists with another UUID), and a pool's intent names the UUID it will have.
- A volume is created in three steps: an intent (what is about to be created), a check
  that no volume of that name appeared meanwhile, the create; then the confirmation,
  with the identity the volume really has (path, format, size, backing file). A create
  that fails drops its intent at once: a foreign object is never taken for ours. A
  crash between the create and the confirmation leaves an intent that the next plan
  honours only if the object is exactly what was about to be created.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

from virtplan.documents.parse import parse_volume
from virtplan.documents.render import Identity, Renderer
from virtplan.documents.specs import generic
from virtplan.errors import VirtplanError
from virtplan.hosts.fetch import again_if_lost
from virtplan.hosts.records import Records
from virtplan.plan.ownership import identity_of


class AppearedMeanwhile(VirtplanError):
    """An object of the name apply was about to create appeared after the plan was made."""


def fresh_uuid(renderer: Renderer, address: str) -> str:
    """Choose the UUID of an object about to be created, so its definition carries it."""
    value = str(uuid.uuid4())
    kept = renderer.identities.get(address)
    renderer.identities[address] = Identity(value, list(kept.macs) if kept else [])
    return value


def with_uuid(xml: str, value: str) -> str:
    """A pool (or any) definition with `<uuid>` set, right after its name."""
    root = ET.fromstring(xml)
    for old in root.findall("uuid"):
        root.remove(old)
    el = ET.Element("uuid")
    el.text = value
    name = root.find("name")
    root.insert(list(root).index(name) + 1 if name is not None else 0, el)
    return ET.tostring(root, encoding="unicode")


def volume_identity(vol: Any) -> dict[str, Any]:
    """The identity a volume has on the host now (what its confirmed record holds)."""
    return identity_of(generic(parse_volume(ET.fromstring(vol.XMLDesc(0)))))


def create_volume(
    store: Records,
    uri: str,
    address: str,
    pool: Any,
    name: str,
    make: Callable[[], Any],
    expect: dict[str, Any],
    upload: bool = False,
    **tags: Any,
) -> Any:
    """Create a volume as virtplan's own: intent, absence check, `make()`, confirmation.

    `expect` holds the identity fields known before the create (format, backing); `tags`
    are extra record fields (seed_of, layer_of, ...). With `upload`, `make` also fills the
    volume: an intent left by a crash then says so, and the planner recreates the volume
    rather than trusting half its bytes. Returns the created volume."""
    import libvirt

    stage = "upload" if upload else None
    store.put(uri, address, kind="volume", pending=True, expect=expect, stage=stage, **tags)
    try:
        again_if_lost(lambda: pool.storageVolLookupByName(name))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
            store.forget(uri, address)
            raise
    else:
        store.forget(uri, address)
        raise AppearedMeanwhile(
            f"{address}: a volume named {name!r} appeared on the host after the plan was made; virtplan did not "
            "create it and leaves it alone (rename it, or run plan again to see it)"
        )
    try:
        vol = make()
    except BaseException:
        store.forget(uri, address)  # nothing of ours was made: the intent must not stay
        raise
    store.put(uri, address, pending=False, stage=None, id=vol.path(), expect=volume_identity(vol), **tags)
    return vol


def confirm_volume(store: Records, uri: str, address: str, vol: Any) -> None:
    """Record a volume's identity after virtplan changed it (grown, re-uploaded)."""
    store.put(uri, address, id=vol.path(), expect=volume_identity(vol))


def is_ours(store: Records, uri: str, address: str, vol: Any) -> bool:
    """The existing volume `vol` is provably this stack's (as the planner decides it)."""
    from virtplan.hosts.observe import ObservedObject
    from virtplan.plan.ownership import owner_stack

    xml = vol.XMLDesc(0)
    obj = ObservedObject("volume", address.split("/", 2)[2], vol.path(), xml, generic(parse_volume(ET.fromstring(xml))))
    return owner_stack(obj, address, uri, store, "?") == "?"
