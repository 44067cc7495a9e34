"""Images from where people get them: `Volume(source="https://...", sha256=...)` against a
local HTTP server (Range requests, a dropped connection) and a real private host. The plan
says "download N MiB"; the download is resumed and verified, uploaded through libvirt, and
recorded with the volume on the host, so later plans need neither the server nor the cache."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from virtplan_lab.imageserver import ImageServer

MiB = 1 << 20
STACK = """
from virtplan import Host, Pool, Volume
Host("h", uri="qemu:///system", domain_type="qemu")
pool = Pool("url-pool", path="/var/lib/libvirt/images/url")
base = Volume("debian.qcow2", pool=pool, source={url!r}, sha256={digest!r})
Volume("web.qcow2", pool=pool, backing=base)  # an overlay: its size is the image's
"""


def run(env, *args: str, rc: int = 0) -> str:
    proc = subprocess.run([sys.executable, "-m", "virtplan.cli", *args], env=env.vars, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"virtplan {' '.join(args)} exited {proc.returncode}, expected {rc}:\n{out}"
    assert "Traceback" not in out, out
    return out


@pytest.fixture(scope="module")
def env(private_host, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("url")
    image = tmp / "debian.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "96M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 0x6b 0 8M", str(image)], check=True, capture_output=True)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    server = ImageServer({"/cloud/debian.qcow2": image})
    server.__enter__()
    stack = tmp / "url.py"
    stack.write_text(STACK.format(url=server.url("/cloud/debian.qcow2"), digest=digest))
    cache = tmp / "cache"
    vars_ = {**os.environ, "NO_COLOR": "1", "COLUMNS": "250", "VIRTPLAN_CACHE_DIR": str(cache),
             "VIRTPLAN_URI": private_host.uri}  # fmt: skip
    conn = private_host.connect()
    yield SimpleNamespace(image=image, digest=digest, server=server, stack=str(stack), cache=cache, vars=vars_,
                          conn=conn, tmp=tmp)  # fmt: skip
    conn.close()
    server.close()


def test_validate_is_offline_and_plan_reads_only_the_header(env):
    assert "valid" in run(env, "validate", env.stack)
    assert env.server.requests == [], "validate fetched nothing"
    out = run(env, "plan", env.stack)
    size = env.image.stat().st_size
    assert f"image: download {size / MiB:.3g} MiB from {env.server.url('/cloud/debian.qcow2')}" in out, out
    assert f"(sha256 {env.digest[:12]}...)" in out
    assert out.count("capacity = 96 MiB") == 2, "the image's virtual size, and its overlay's"
    assert [(r.method, r.range) for r in env.server.requests] == [("GET", "bytes=0-511")]


def test_an_interrupted_download_is_resumed_verified_and_uploaded(env):
    env.server.cut_after = 3 * MiB
    out = run(env, "apply", env.stack, "--yes", rc=1)
    assert "stopped after 3 MiB of" in out and "run again to resume it" in out, out
    assert "url-pool" not in [p.name() for p in env.conn.listAllStoragePools()], "nothing was created"
    assert "3 MiB already here: resumed" in run(env, "plan", env.stack)

    out = run(env, "apply", env.stack, "--yes")
    assert "resumed at 3 MiB" in out and "sha256 verified" in out, out
    assert env.server.requests[-1].range == f"bytes={3 * MiB}-"
    pool = env.conn.storagePoolLookupByName("url-pool")
    vol = pool.storageVolLookupByName("debian.qcow2")
    stream = env.conn.newStream(0)
    vol.download(stream, 0, 0, 0)
    got = bytearray()
    stream.recvAll(lambda _s, data, acc: acc.extend(data) or len(data), got)
    stream.finish()
    assert hashlib.sha256(bytes(got)).hexdigest() == env.digest, "the host has exactly the verified image"
    web = pool.storageVolLookupByName("web.qcow2")
    assert vol.path() in web.XMLDesc(0) and web.info()[1] == 96 * MiB
    assert "No changes" in run(env, "plan", env.stack)


def test_later_plans_need_neither_the_server_nor_the_cache(env):
    shutil.rmtree(env.cache)
    before = len(env.server.requests)
    assert "No changes" in run(env, "plan", env.stack), "the facts come from the volume's record on the host"
    assert len(env.server.requests) == before


def test_a_wrong_checksum_creates_nothing(env, tmp_path):
    stack = tmp_path / "wrong.py"
    stack.write_text(
        STACK.format(url=env.server.url("/cloud/debian.qcow2"), digest="ab" * 32).replace("url-pool", "wrong-pool")
    )
    out = run(env, "apply", str(stack), "--yes", rc=1)
    assert f"has sha256 {env.digest}, but the stack declares {'ab' * 32}" in out and "Nothing was created" in out
    assert "wrong-pool" not in [p.name() for p in env.conn.listAllStoragePools()]


def test_destroy(env):
    run(env, "destroy", env.stack, "--yes", "--allow-destroy")
    assert "url-pool" not in [p.name() for p in env.conn.listAllStoragePools()]
