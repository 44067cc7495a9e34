"""Downloads of URL images against a real local HTTP server (virtplan_lab.imageserver):
facts from the image's first bytes, resumed downloads (Range), servers that ignore ranges,
verified checksums, and validation that never touches the network."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from virtplan.errors import ValidationError
from virtplan.hosts import downloads
from virtplan.model.images import RemoteImage
from virtplan_lab.imageserver import ImageServer

MiB = 1 << 20


@pytest.fixture
def image(tmp_path) -> Path:
    """A qcow2 image of 64 MiB (virtual) holding 6 MiB of data."""
    path = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x5a 0 6M", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("VIRTPLAN_CACHE_DIR", str(folder))
    return folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_facts_come_from_the_first_bytes_then_from_the_cache(image):
    with ImageServer({"/img.qcow2": image}) as server:
        facts = downloads.image_facts(server.url("/img.qcow2"), "sha256", sha256(image))
        assert (facts.format, facts.virtual_size, facts.length) == ("qcow2", 64 * MiB, image.stat().st_size)
        assert [(r.method, r.range) for r in server.requests] == [("GET", "bytes=0-511")]
        assert downloads.cached("sha256", sha256(image)) is None, "planning reads the header, not the image"
        again = downloads.image_facts(server.url("/img.qcow2"), "sha256", sha256(image))
        assert again == facts and len(server.requests) == 1, "known facts are not fetched again"
    recorded = facts.as_record()
    moved = downloads.image_facts("http://127.0.0.1:9/gone", "sha256", sha256(image), recorded=recorded)
    assert moved.virtual_size == 64 * MiB, "the host's record serves when the server is gone"


def test_an_interrupted_download_resumes_where_it_stopped(image, cache):
    digest = sha256(image)
    with ImageServer({"/img.qcow2": image}) as server:
        facts = downloads.image_facts(server.url("/img.qcow2"), "sha256", digest)
        server.cut_after = 2 * MiB
        with pytest.raises(downloads.DownloadError, match=r"stopped after 2 MiB of .* run again to resume it"):
            downloads.fetch(facts)
        assert downloads.partial("sha256", digest) == 2 * MiB and downloads.cached("sha256", digest) is None
        seen: list[int] = []
        path, how = downloads.fetch(facts, lambda done, total: seen.append(done))
        assert how == "resumed at 2 MiB" and sha256(path) == digest
        assert server.requests[-1].range == f"bytes={2 * MiB}-"
        deadline = time.monotonic() + 5  # the server thread notes what it sent just after sending it
        while server.requests[-1].sent == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.requests[-1].sent == image.stat().st_size - 2 * MiB, "only the rest was sent"
        assert seen[0] > 2 * MiB and seen[-1] == image.stat().st_size
        assert downloads.fetch(facts) == (path, "cached") and len(server.requests) == 3


def test_a_server_that_ignores_ranges_gets_a_fresh_download(image):
    digest = sha256(image)
    with ImageServer({"/img.qcow2": image}, ranges=False) as server:
        facts = downloads.image_facts(server.url("/img.qcow2"), "sha256", digest)
        assert facts.virtual_size == 64 * MiB and downloads.cached("sha256", digest) is None, "only the header was read"
        server.cut_after = MiB
        with pytest.raises(downloads.DownloadError):
            downloads.fetch(facts)
        path, how = downloads.fetch(facts)
        assert how == "downloaded" and sha256(path) == digest


def test_a_wrong_checksum_is_refused_and_nothing_is_kept(image):
    wrong = "0" * 64
    with ImageServer({"/img.qcow2": image}) as server:
        facts = downloads.image_facts(server.url("/img.qcow2"), "sha256", wrong)
        with pytest.raises(downloads.DownloadError, match="but the stack declares 0000"):
            downloads.fetch(facts)
    assert downloads.partial("sha256", wrong) == 0 and downloads.cached("sha256", wrong) is None


def test_compressed_and_missing_images_say_why(tmp_path):
    xz = tmp_path / "img.qcow2.xz"
    xz.write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 600)
    with ImageServer({"/img.qcow2.xz": xz}) as server:
        with pytest.raises(downloads.DownloadError, match="xz-compressed; point at the uncompressed"):
            downloads.image_facts(server.url("/img.qcow2.xz"), "sha256", "1" * 64)
        with pytest.raises(downloads.DownloadError, match="HTTP 404"):
            downloads.image_facts(server.url("/nope.qcow2"), "sha256", "1" * 64)


def test_validation_needs_a_checksum_and_fetches_nothing(tmp_path, build):
    from virtplan import Pool, Volume

    with ImageServer({}) as server:
        url = server.url("/debian.qcow2")

        def program() -> None:
            pool = Pool("p", path="/var/lib/libvirt/images/p")
            Volume("a.qcow2", pool=pool, source=url)
            Volume("b.qcow2", pool=pool, source=url, sha256="abc")
            Volume("c.qcow2", pool=pool, source=url, sha512="f" * 128)
            Volume("d.qcow2", pool=pool, size="1GiB", sha256="f" * 64)

        with pytest.raises(ValidationError) as err:
            build(program)
        text = str(err.value)
        assert "a.qcow2: sha256: a URL source needs its checksum, sha256= (or sha512=)" in text
        assert "b.qcow2: sha256: must be 64 hexadecimal digits, got 'abc'" in text
        assert "c.qcow2" not in text and "d.qcow2: sha256: only applies to a URL source" in text
        assert server.requests == [], "validation is offline"


def test_remote_image_records_round_trip():
    facts = RemoteImage("https://x/y.qcow2", "sha512", "ab" * 64, None, 2 * MiB, "raw")
    assert RemoteImage.from_record(facts.as_record()) == facts
