"""Images from URLs (`Volume(source="https://...", sha256=...)`): a local download cache,
resumable downloads (HTTP Range) verified against the declared checksum.

The cache lives under virtplan's cache folder (`virtplan.cache.cache_dir`), keyed by
checksum, so an image is fetched once whatever URL or stack names it, and a cached file is
never stale:

    images/<algo>-<digest>        the verified image (uploaded to hosts from here)
    images/<algo>-<digest>.part   a download in progress; the next attempt resumes at its end
    images/<algo>-<digest>.json   what is known of it: URL, length, format, virtual size

Planning needs an image's virtual size before it is downloaded: it comes from the host's
record of the volume (a volume virtplan made from it), else the cache, else the image's
first 512 bytes over HTTP (a Range request). Deleting the folder only costs a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from virtplan._version import __version__
from virtplan.cache import cache_dir
from virtplan.errors import VirtplanError
from virtplan.model.images import RemoteImage, header_facts
from virtplan.units import format_size

CHUNK = 1 << 20
TIMEOUT = 60.0  # seconds without a byte before a download counts as stalled
HEADERS = {"User-Agent": f"virtplan/{__version__}"}

#: progress(done bytes, total bytes or None); called as bytes arrive.
Progress = Callable[[int, int | None], None]


class DownloadError(VirtplanError):
    """An image could not be read, downloaded or verified."""


def images_dir() -> Path:
    return cache_dir() / "images"


def _key(algo: str, digest: str) -> str:
    return f"{algo}-{digest.lower()}"


def cached(algo: str, digest: str) -> Path | None:
    """The verified image with this checksum, if it is in the cache."""
    path = images_dir() / _key(algo, digest)
    return path if path.is_file() else None


def partial(algo: str, digest: str) -> int:
    """Bytes of an interrupted download of this image waiting to be resumed (0: none)."""
    part = images_dir() / f"{_key(algo, digest)}.part"
    return part.stat().st_size if part.is_file() else 0


def image_facts(url: str, algo: str, digest: str, recorded: dict[str, Any] | None = None) -> RemoteImage:
    """What planning needs to know of the image: from `recorded` (the host's record of a
    volume made from it), the cache, or its first bytes over HTTP."""
    for known in (recorded, _meta(algo, digest)):
        if known and known.get("algo") == algo and known.get("digest") == digest.lower():
            try:
                facts = RemoteImage.from_record(known)
            except (KeyError, TypeError, ValueError):
                continue
            return RemoteImage(url, facts.algo, facts.digest, facts.length, facts.virtual_size, facts.format)
    head, total = _head(url)
    try:
        fmt, size = header_facts(head, total)
    except ValueError as exc:
        raise DownloadError(f"the image at {url} cannot be used: {exc}") from None
    facts = RemoteImage(url, algo, digest.lower(), total, size, fmt)
    _write_meta(facts)
    return facts


def _head(url: str) -> tuple[bytes, int | None]:
    """The first 512 bytes of the image at `url` and its length (None if not said)."""
    request = urllib.request.Request(url, headers={**HEADERS, "Range": "bytes=0-511"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            total = _total(resp)
            return resp.read(512), total
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(f"cannot read the image at {url}: {_reason(exc)}") from None


def _total(resp: Any) -> int | None:
    if resp.status == 206:
        match = re.match(r"bytes \d+-\d+/(\d+)", resp.headers.get("Content-Range", ""))
        return int(match.group(1)) if match else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def fetch(image: RemoteImage, progress: Progress | None = None) -> tuple[Path, str]:
    """The verified image in the cache: downloaded (or resumed) unless it is there already.
    Returns its path and what happened ("cached", "downloaded", "resumed at N MiB")."""
    import filelock

    folder = images_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = _key(image.algo, image.digest)
    final = folder / key
    with filelock.FileLock(str(folder / f"{key}.lock")):  # one download per image at a time
        if final.is_file():
            return final, "cached"
        how = _download(image, folder / f"{key}.part", progress)
        os.replace(folder / f"{key}.part", final)
        _write_meta(image)
    return final, how


def _download(image: RemoteImage, part: Path, progress: Progress | None) -> str:
    """Download into `part` (resuming what it holds), then verify the checksum."""
    have = part.stat().st_size if part.is_file() else 0
    resumed_at = have
    hasher = hashlib.new(image.algo)
    headers = dict(HEADERS)
    if have:
        headers["Range"] = f"bytes={have}-"
    total: int | None = image.length
    try:
        with urllib.request.urlopen(urllib.request.Request(image.url, headers=headers), timeout=TIMEOUT) as resp:
            if have and resp.status == 206 and resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                with part.open("rb") as f:  # the checksum covers the bytes from the last attempt too
                    for block in iter(lambda: f.read(CHUNK), b""):
                        hasher.update(block)
                mode = "ab"
            else:  # a fresh start (or a server that ignores ranges: from the beginning again)
                have, resumed_at, mode = 0, 0, "wb"
            total = _total(resp) or total
            with part.open(mode) as out:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    hasher.update(block)
                    have += len(block)
                    if progress is not None:
                        progress(have, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after what we have: it may be complete
            with part.open("rb") as f:
                for block in iter(lambda: f.read(CHUNK), b""):
                    hasher.update(block)
        else:
            raise DownloadError(f"cannot download {image.url}: {_reason(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        shown = f" of {format_size(total)}" if total else ""
        raise DownloadError(
            f"the download of {image.url} stopped after {format_size(have)}{shown}: {_reason(exc)}; "
            "run again to resume it"
        ) from None
    if total is not None and have != total:
        raise DownloadError(f"the download of {image.url} stopped after {format_size(have)} of {format_size(total)}: "
                            "the connection ended early; run again to resume it")  # fmt: skip
    actual = hasher.hexdigest()
    if actual != image.digest:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"the image downloaded from {image.url} has {image.algo} {actual}, but the stack declares "
            f"{image.digest}: the file at that URL changed, or the download was corrupted. Nothing was created"
        )
    return f"resumed at {format_size(resumed_at)}" if resumed_at else "downloaded"


def _meta(algo: str, digest: str) -> dict[str, Any] | None:
    try:
        data = json.loads((images_dir() / f"{_key(algo, digest)}.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_meta(image: RemoteImage) -> None:
    with contextlib.suppress(OSError):  # the cache is disposable; never fail on it
        folder = images_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"{_key(image.algo, image.digest)}.json.tmp"
        tmp.write_text(json.dumps(image.as_record(), indent=2))
        os.replace(tmp, folder / f"{_key(image.algo, image.digest)}.json")
