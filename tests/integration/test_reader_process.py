"""A local host read by a child process (`virtplan.hosts.reader`), against a real libvirtd.

What the child hands over is what this process reads itself on its own connection; a
stopped child hands over nothing (observe then reads for itself) and leaves no process; what
a child that stops midway did not send is read here, and the order is the same;
a no-op `virtplan plan` of an unchanged stack file reads through a child, and sees a
change made behind its back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

POOL = "rp-pool"
COUNT = 40  # above the count fetched one by one: the child's reads run concurrently too


@pytest.fixture(scope="module")
def bed(private_host):
    conn = private_host.connect()
    pool = conn.storagePoolDefineXML(
        f"<pool type='dir'><name>{POOL}</name><target><path>/var/lib/libvirt/images/{POOL}</path></target></pool>"
    )
    pool.build(0)
    pool.create()
    for i in range(COUNT):
        pool.createXML(f"<volume><name>v{i}.qcow2</name><capacity>1048576</capacity>"
                       "<target><format type='qcow2'/></target></volume>", 0)  # fmt: skip
        dom = conn.defineXML(
            f"<domain type='qemu'><name>rp-{i}</name><memory>65536</memory><os><type>hvm</type></os>"
            "<devices><graphics type='vnc' passwd='s3cret'/></devices></domain>"
        )
        if i % 3 == 0:
            dom.setAutostart(1)
    yield private_host, conn
    conn.close()


def run(script: str, env: dict[str, str] | None = None) -> dict:
    """`script` in a fresh process (one thread: what the command line has when it forks)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_child_hands_over_what_this_process_reads(bed):
    host, _ = bed
    found = run(f"""
        import json, os, sys
        from virtplan.hosts.reader import fork_readers
        readers = fork_readers({{"h": ({host.uri!r}, [{POOL!r}, "no-such-pool"])}}, secure=True)
        child = readers["h"]

        def unused(*key):
            raise AssertionError(f"{{key}} was not sent")

        listing = child.domains(unused)
        listing.xmls = list(listing.xmls)
        volumes = list(child.volumes({POOL!r}, unused))
        missing = child.volumes("no-such-pool", unused)
        child.stop()  # ends and reaps it
        signalled = []
        os.kill = lambda pid, sig: signalled.append(pid)
        child.stop()  # once reaped, its PID may be another process's: never signalled
        import libvirt
        from virtplan.hosts.fetch import domain_xml_flags, list_domains, list_volumes

        flags = domain_xml_flags(secure=True)
        assert child.xml_flags == flags
        conn = libvirt.open({host.uri!r})
        direct = list_domains(conn, flags)
        direct_volumes = list_volumes(conn.storagePoolLookupByName({POOL!r}))
        print(json.dumps({{
            "same_domains": listing.xmls == direct.xmls,
            "same_sets": (listing.active, listing.autostart) == (direct.active, direct.autostart),
            "same_volumes": sorted(volumes) == sorted(direct_volumes),
            "domains": len(listing.xmls), "volumes": len(volumes), "missing": missing,
            "secure": all("s3cret" in x for n, u, x, k in listing.xmls if n.startswith("rp-")),
            "autostart": len(listing.autostart),
            "child_gone": not os.path.exists(f"/proc/{{child._pid}}"),
            "signalled_after_reaped": signalled,
        }}))
    """)
    assert found["same_domains"] and found["same_sets"] and found["same_volumes"]
    assert found["domains"] >= COUNT and found["volumes"] == COUNT
    assert found["missing"] is None  # not read there: observe reads (and reports) it itself
    assert found["secure"]  # read with the flags asked for (the console password, to digest)
    assert found["autostart"] >= (COUNT + 2) // 3
    assert found["child_gone"]  # reaped
    assert found["signalled_after_reaped"] == []


def test_a_stopped_child_hands_over_nothing_and_is_gone(bed):
    host, _ = bed
    found = run(f"""
        import json, os
        from virtplan.hosts.reader import fork_readers

        child = fork_readers({{"h": ({host.uri!r}, [{POOL!r}])}}, secure=False)["h"]
        child.stop()
        print(json.dumps({{"domains": child.domains(print) is None, "volumes": child.volumes({POOL!r}, print) is None,
                          "gone": not os.path.exists(f"/proc/{{child._pid}}")}}))
    """)
    assert found == {"domains": True, "volumes": True, "gone": True}


def test_what_a_child_stopped_midway_did_not_send_is_read_by_fill_in_order(bed):
    host, _ = bed
    found = run(f"""
        import json, os, threading
        import virtplan.hosts.reader as reader
        from virtplan.hosts.fetch import domain_xml_flags, list_domains, list_volumes, with_key, inactive_xml
        import libvirt

        # the child stops itself after sending its first run of domain documents
        sender = reader._Sender.__call__
        def once(self, *message):
            sender(self, *message)
            if message[0] == "part" and message[1] is None:
                os._exit(0)
        reader._Sender.__call__ = once
        child = reader.fork_readers({{"h": ({host.uri!r}, [{POOL!r}])}}, secure=True)["h"]
        conn = libvirt.open({host.uri!r})
        flags = domain_xml_flags(secure=True)
        filled, filled_volumes = [], []

        def fill_domain(name, uuid):
            filled.append(name)
            return with_key(inactive_xml(conn.lookupByUUIDString(uuid), flags))

        def fill_volume(pool, name):
            filled_volumes.append(name)
            return with_key(inactive_xml(conn.storagePoolLookupByName(pool).storageVolLookupByName(name), 0))

        listing = child.domains(fill_domain)
        xmls = list(listing.xmls)
        volumes = child.volumes({POOL!r}, fill_volume)
        volumes = None if volumes is None else list(volumes)
        direct = list_domains(conn, flags)
        print(json.dumps({{
            "same_domains": xmls == direct.xmls,
            "same_volumes": volumes is None or sorted(volumes) == sorted(list_volumes(conn.storagePoolLookupByName({POOL!r}))),
            "filled": len(filled), "domains": len(xmls),
            "gone": not os.path.exists(f"/proc/{{child._pid}}"),
        }}))
    """)
    assert found["same_domains"] and found["same_volumes"]  # in the order listed, as if read here
    assert 0 < found["filled"] < found["domains"]  # the first run came from the child, the rest from fill
    assert found["gone"]  # reaped once it exited


def test_a_noop_plan_reads_through_a_child_and_sees_changes_behind_its_back(bed, tmp_path):
    host, conn = bed
    stack = tmp_path / "readers.py"
    stack.write_text(
        textwrap.dedent(f"""
        from virtplan import VM, Host, Pool, Volume, name_stack

        name_stack("readers")
        h = Host("h", uri={host.uri!r}, domain_type="qemu")
        pool = Pool("rp-stack-pool", path="/var/lib/libvirt/images/rp-stack-pool")
        for i in range(3):
            VM(f"rp-vm{{i}}", memory="64MiB", vcpus=1, state="stopped",
               disks=[Volume(f"rp-vm{{i}}.qcow2", pool=pool, size="8MiB")])
    """)
    )
    env = {**os.environ, "VIRTPLAN_CACHE_DIR": str(tmp_path / "cache"), "VIRTPLAN_STATE_DIR": str(tmp_path / "state"),
           "NO_COLOR": "1", "COLUMNS": "200"}  # fmt: skip
    env.pop("VIRTPLAN_URI", None)
    marks = tmp_path / "children"
    # the command line, noting each reader process it forks and what it handed over
    cli = textwrap.dedent(f"""
        import sys
        import virtplan.hosts.reader as reader

        forked = reader.ReaderProcess.__init__
        def noted(self, *args):
            forked(self, *args)
            with open({str(marks)!r}, "a") as f:
                f.write(args[0] + "\\n")
        reader.ReaderProcess.__init__ = noted
        sys.argv = ["virtplan", *sys.argv[1:]]
        import virtplan.cli
        virtplan.cli.main()
    """)

    def virtplan(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-c", cli, *args], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    virtplan("apply", str(stack), "--yes")
    assert not marks.exists()  # apply reads again under its lock: nothing forked for it
    first = virtplan("plan", str(stack))
    second = virtplan("plan", str(stack))
    assert "No changes" in first and second == first
    assert marks.read_text().splitlines() == [host.uri, host.uri]  # both read by a child (the hint exists)

    dom = conn.lookupByName("rp-vm1")
    dom.setAutostart(1)  # behind virtplan's back
    after = virtplan("plan", str(stack))
    assert "rp-vm1" in after and "autostart" in after and "No changes" not in after
    assert len(marks.read_text().splitlines()) == 3
    dom.setAutostart(0)
    virtplan("destroy", str(stack), "--yes", "--allow-destroy")
