"""XML of the objects that hold virtplan's records on a host (its ledger pool and segments).

(To be folded into `virtplan.documents.fragments` with every other fragment.)
"""

from __future__ import annotations

import xml.etree.ElementTree as ET


def ledger_pool_xml(name: str, path: str) -> str:
    """A `dir` storage pool for virtplan's ledgers."""
    pool = ET.Element("pool", {"type": "dir"})
    ET.SubElement(pool, "name").text = name
    ET.SubElement(ET.SubElement(pool, "target"), "path").text = path
    return ET.tostring(pool, encoding="unicode")


def volume_xml(name: str, capacity: int, fmt: str) -> str:
    """A plain volume: name, capacity in bytes, format."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", {"unit": "bytes"}).text = str(capacity)
    ET.SubElement(ET.SubElement(vol, "target"), "format", {"type": fmt})
    return ET.tostring(vol, encoding="unicode")
