"""Facts about images: local files (format and virtual size, read from their headers), and
images at URLs (what a volume with `source="https://..."` needs; virtplan.hosts.downloads
fetches them). Nothing here touches the network."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from virtplan.model.resources import Volume

QCOW2_MAGIC = b"QFI\xfb"


def image_format(path: Path) -> str:
    """'qcow2' when the file starts with the qcow2 magic, else 'raw'."""
    with path.open("rb") as f:
        return "qcow2" if f.read(4) == QCOW2_MAGIC else "raw"


def image_virtual_size(path: Path) -> int:
    """The guest-visible size: the qcow2 header's size field, or the raw file's length."""
    with path.open("rb") as f:
        header = f.read(32)
    if header[:4] == QCOW2_MAGIC:
        (size,) = struct.unpack(">Q", header[24:32])
        return int(size)
    return path.stat().st_size


# -- images from URLs ---------------------------------------------------------------------------
URL_SCHEMES = ("http://", "https://")
CHECKSUMS = {"sha256": 64, "sha512": 128}  # algorithm -> hex digits


def is_url(source: object) -> bool:
    """True for an image to download (http:// or https://) rather than a local file."""
    return isinstance(source, str) and source.lower().startswith(URL_SCHEMES)


@dataclass(frozen=True)
class RemoteImage:
    """What is known of an image at a URL before (or after) it is downloaded: read from the
    host's record of the volume, the local cache, or the image's first bytes over HTTP."""

    url: str
    algo: str  # "sha256" or "sha512"
    digest: str
    length: int | None  # bytes to download (None: the server did not say)
    virtual_size: int  # the guest-visible size (qcow2 header; a raw image's length)
    format: str  # "qcow2" or "raw", from the image's first bytes

    def as_record(self) -> dict[str, object]:
        return {"url": self.url, "algo": self.algo, "digest": self.digest, "length": self.length,
                "virtual_size": self.virtual_size, "format": self.format}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict[str, object]) -> RemoteImage:
        length = record.get("length")
        return cls(str(record["url"]), str(record["algo"]), str(record["digest"]),
                   int(length) if isinstance(length, int) else None, int(record["virtual_size"]),  # type: ignore[call-overload]
                   str(record["format"]))  # fmt: skip


def header_facts(head: bytes, total: int | None) -> tuple[str, int]:
    """(format, virtual size) from an image's first bytes and its length; ValueError for
    images virtplan cannot upload as they are (compressed ones)."""
    if head[:4] == QCOW2_MAGIC and len(head) >= 32:
        (size,) = struct.unpack(">Q", head[24:32])
        return "qcow2", int(size)
    for magic, kind in ((b"\xfd7zXZ\x00", "xz"), (b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"(\xb5/\xfd", "zstd")):
        if head.startswith(magic):
            raise ValueError(f"it is {kind}-compressed; point at the uncompressed .qcow2 or .raw image")
    if total is None:
        raise ValueError("the server does not say how long it is (a raw image's size is its length)")
    return "raw", total


def url_source_problems(vol: Volume) -> list[tuple[str, str]]:
    """(field, message) for a volume whose source is a URL: it needs one checksum of the
    right length (the download is verified against it). Nothing is downloaded here."""
    out = []
    given = {algo: getattr(vol, algo) for algo in CHECKSUMS if getattr(vol, algo) is not None}
    if not given:
        out.append(("sha256", "a URL source needs its checksum, sha256= (or sha512=), to verify the download; "
                    "images publish one beside them (SHA256SUMS, SHA512SUMS)"))  # fmt: skip
    elif len(given) > 1:
        out.append(("sha256", "give one checksum, sha256= or sha512="))
    for algo, value in given.items():
        digits = CHECKSUMS[algo]
        if not isinstance(value, str) or len(value) != digits or any(c not in "0123456789abcdefABCDEF" for c in value):
            out.append((algo, f"must be {digits} hexadecimal digits, got {value!r}"))
    return out


def checksum_problems(vol: Volume) -> list[tuple[str, str]]:
    """A checksum on a volume whose source is not a URL (only downloads are verified)."""
    return [(algo, "only applies to a URL source (source='https://...')") for algo in CHECKSUMS
            if getattr(vol, algo, None) is not None and not is_url(vol.source)]  # fmt: skip
