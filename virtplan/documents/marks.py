"""virtplan's ownership mark: `<virtplan:owner stack=… project=… address=…/>` in `<metadata>`.

The templates write it into every domain and network virtplan defines; these functions
write it onto objects that exist already (adopting them, renaming a stack, migrating).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from virtplan.documents.render import NAMESPACE

ET.register_namespace("virtplan", NAMESPACE)


def owner_attrs(stack: str, project: str, address: str, **extra: str) -> dict[str, str]:
    """The mark's attributes, in the order the templates write them."""
    attrs = {"stack": stack}
    if project:
        attrs["project"] = project
    attrs["address"] = address
    attrs.update(extra)
    return attrs


def owner_element(attrs: dict[str, str]) -> str:
    """The mark as a lone element, for `virDomainSetMetadata` (libvirt adds the namespace)."""
    return ET.tostring(ET.Element("owner", attrs), encoding="unicode")


def stamped(xml: str, attrs: dict[str, str]) -> str:
    """A domain's or network's XML with its virtplan mark replaced by one with `attrs`."""
    root = ET.fromstring(xml)
    meta = root.find("metadata")
    if meta is None:
        meta = ET.Element("metadata")
        at = next((i + 1 for i, el in enumerate(root) if el.tag in ("uuid", "name")), 0)
        root.insert(at, meta)
    for old in meta.findall(f"{{{NAMESPACE}}}owner"):
        meta.remove(old)
    ET.SubElement(meta, f"{{{NAMESPACE}}}owner", attrs)
    return ET.tostring(root, encoding="unicode")
