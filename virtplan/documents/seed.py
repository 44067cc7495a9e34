"""NoCloud seed images: an ISO 9660 volume labelled `cidata`, built in memory by pycdlib."""

from __future__ import annotations

import io
import re


def build_seed_iso(files: dict[str, str]) -> bytes:
    """An ISO with each file under its exact name (Joliet and Rock Ridge) in the root."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, content in sorted(files.items()):
        data = content.encode()
        iso_name = re.sub(r"[^A-Z0-9_]", "_", name.upper())[:30] + ".;1"
        iso.add_fp(io.BytesIO(data), len(data), "/" + iso_name, rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def read_seed_iso(data: bytes) -> dict[str, str]:
    """The files of a seed ISO by their Rock Ridge names (for tests and `show`)."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    files = {}
    try:
        for child in iso.list_children(rr_path="/"):
            if child.is_dir():
                continue
            name = child.rock_ridge.name().decode()
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path="/" + name)
            files[name] = buf.getvalue().decode()
    finally:
        iso.close()
    return files
