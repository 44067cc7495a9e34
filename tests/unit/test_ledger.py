"""The ledger: a stack's records as segments on a host (here in a store that behaves like
the host's pool: create-if-absent, read, delete, list, and uploads that take a while)."""

from __future__ import annotations

import json
import threading

import pytest

from virtplan.hosts import ledger as ledger_mod
from virtplan.hosts.ledger import HostLedger, LedgerError, parse_name


class SlowStore(ledger_mod._Store):
    """A host pool in memory; `hold` makes the next create visible before its bytes are."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.times: dict[str, float] = {}
        self.clock = 1000.0
        self.held: dict[str, bytes] = {}
        self.hold_next = False
        self.lock = threading.Lock()

    def names(self) -> list[str]:
        with self.lock:
            return list(self.blobs)

    def read(self, name: str) -> bytes | None:
        with self.lock:
            return self.blobs.get(name)

    def create(self, name: str, data: bytes) -> bool:
        with self.lock:
            if name in self.blobs:
                return False
            self.clock += 1
            self.times[name] = self.clock
            if self.hold_next:  # created (listed, empty) but still uploading
                self.hold_next = False
                self.blobs[name] = b""
                self.held[name] = data
            else:
                self.blobs[name] = data
            return True

    def finish_uploads(self) -> None:
        with self.lock:
            for name, data in self.held.items():
                if name in self.blobs:
                    self.blobs[name] = data
            self.held.clear()

    def delete(self, name: str) -> None:
        with self.lock:
            self.blobs.pop(name, None)

    def mtime(self, name: str) -> float | None:
        return self.times.get(name)


def test_records_written_by_one_process_are_read_by_another() -> None:
    store = SlowStore()
    a = HostLedger(store, "proj/demo")
    a.update({"h/pool/p": {"kind": "pool", "id": "u-1", "pending": False}})
    a.update({"h/volume/p/v": {"kind": "volume", "pending": True}})
    a.update({"h/volume/p/v": {"pending": False, "id": "/p/v"}})
    a.update(drops=["h/pool/p"])
    b = HostLedger(store, "proj/demo")
    assert b.records() == {"h/volume/p/v": {"kind": "volume", "pending": False, "id": "/p/v"}}
    assert HostLedger(store, "other/demo").records() == {}  # another stack's ledger is its own
    assert b.neighbours() == set()
    assert HostLedger(store, "other/demo").neighbours() == {"proj/demo"}


def test_two_writers_never_lose_each_others_writes() -> None:
    store = SlowStore()
    a, b = HostLedger(store, "s"), HostLedger(store, "s")
    a.records(), b.records()  # both read the (empty) ledger first
    a.update({"x": {"v": 1}})
    b.update({"y": {"v": 2}})  # b's view is stale: it takes the next number and reads again
    a.update({"z": {"v": 3}})
    expected = {"x": {"v": 1}, "y": {"v": 2}, "z": {"v": 3}}
    assert a.records() == b.records() == HostLedger(store, "s").records() == expected
    seqs = sorted(parse_name(n).seq for n in store.names())  # type: ignore[union-attr]
    assert seqs == [1, 2, 3]


def test_many_threads_writing_at_once() -> None:
    store = SlowStore()

    def write(i: int) -> None:
        HostLedger(store, "s").update({f"a{i}": {"n": i}})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert HostLedger(store, "s").records() == {f"a{i}": {"n": i} for i in range(40)}


def test_compaction_keeps_a_write_whose_upload_was_still_running() -> None:
    store = SlowStore()
    a, b = HostLedger(store, "s"), HostLedger(store, "s")
    a.update({"x": {"v": 1}})
    store.hold_next = True
    b.update({"seed": {"id": "/p/seed.iso"}})  # listed, not readable yet
    a.compact()  # folds x; must neither fold nor delete b's segment
    store.finish_uploads()
    assert HostLedger(store, "s").records() == {"x": {"v": 1}, "seed": {"id": "/p/seed.iso"}}
    HostLedger(store, "s").compact()
    assert len(store.names()) == 1  # now everything is one base
    assert HostLedger(store, "s").records() == {"x": {"v": 1}, "seed": {"id": "/p/seed.iso"}}


def test_a_write_that_died_is_ignored_and_dropped_once_stale() -> None:
    store = SlowStore()
    a = HostLedger(store, "s")
    a.update({"x": {"v": 1}})
    store.hold_next = True
    a.update({"lost": {"v": 0}})
    store.held.clear()  # the writer died mid-upload: its segment stays empty
    assert HostLedger(store, "s").records() == {"x": {"v": 1}}
    HostLedger(store, "s").compact()
    assert len(store.names()) == 2  # the dead write may still be running: kept
    store.clock += ledger_mod.STALE_WRITE + 10
    HostLedger(store, "s").update({"y": {"v": 2}})
    HostLedger(store, "s").compact()
    assert len(store.names()) == 1
    assert HostLedger(store, "s").records() == {"x": {"v": 1}, "y": {"v": 2}}


def test_a_segment_that_does_not_match_its_checksum_does_not_count() -> None:
    store = SlowStore()
    HostLedger(store, "s").update({"x": {"v": 1}})
    name = store.names()[0]
    doc = json.loads(store.blobs[name])
    doc["set"]["x"]["v"] = 666  # changed by hand: no longer what virtplan wrote
    store.blobs[name] = json.dumps(doc).encode()
    assert HostLedger(store, "s").records() == {}


def test_a_newer_format_is_refused_not_misread() -> None:
    store = SlowStore()
    HostLedger(store, "s").update({"x": {"v": 1}})
    name = store.names()[0]
    doc = json.loads(store.blobs[name])
    doc["version"] = 99
    doc["sha256"] = ledger_mod._checksum(doc)
    store.blobs[name] = json.dumps(doc).encode()
    with pytest.raises(LedgerError, match="format version 99"):
        HostLedger(store, "s").records()


def test_compaction_folds_every_delta_into_one_base() -> None:
    store = SlowStore()
    a = HostLedger(store, "s")
    for i in range(70):
        a.update({f"k{i}": {"i": i}})
    a.update(drops=["k3"])
    assert a.deltas() == 71 and len(store.names()) == 71
    a.compact()
    assert len(store.names()) == 1
    assert HostLedger(store, "s").records() == {f"k{i}": {"i": i} for i in range(70) if i != 3}


def test_a_slow_writer_never_reuses_a_folded_name() -> None:
    """A writer that listed the ledger before a compaction deleted what it folded may pick
    a number the base folded; its write must still count (segment names are never reused)."""
    store = SlowStore()
    a, slow = HostLedger(store, "s"), HostLedger(store, "s")
    a.update({"x": {"v": 1}})
    listed = slow.store_segments()  # the slow writer's view: seq 1 is the newest
    a.compact()  # base 2 folds segment 1 and deletes it
    slow.store_segments = lambda: listed  # type: ignore[method-assign]
    slow.update({"y": {"v": 2}})  # it writes seq 2 again, under a new name
    del slow.store_segments
    assert HostLedger(store, "s").records() == {"x": {"v": 1}, "y": {"v": 2}}


class SlowerStore(SlowStore):
    """Each write takes a while (as an upload to the host does); `fail` makes writes fail."""

    def __init__(self) -> None:
        super().__init__()
        self.creates = 0
        self.fail = False

    def create(self, name: str, data: bytes) -> bool:
        import time

        time.sleep(0.02)
        if self.fail:
            raise OSError("the host went away")
        self.creates += 1
        return super().create(name, data)


def test_concurrent_writes_of_one_process_share_segments() -> None:
    store = SlowerStore()
    ledger = HostLedger(store, "s")
    ledger.records()
    start = threading.Barrier(16)

    def write(i: int) -> None:
        start.wait()
        ledger.update({f"a{i}": {"n": i}}, drops=[f"gone{i}"])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = {f"a{i}": {"n": i} for i in range(16)}
    assert ledger.records() == HostLedger(store, "s").records() == expected
    assert store.creates < 16  # written together, not one segment per call


def test_merged_writes_equal_the_writes_one_after_the_other() -> None:
    batch = [
        ledger_mod._Write({"a": {"x": 1}, "b": {"x": 1}}, []),
        ledger_mod._Write({}, ["a", "c"]),
        ledger_mod._Write({"a": {"y": 2}, "b": {"y": 2}}, []),
    ]
    sets, drops = ledger_mod._merged(batch)
    assert sets == {"a": {"y": 2}, "b": {"x": 1, "y": 2}} and drops == ["a", "c"]
    store = SlowStore()
    one, each = HostLedger(store, "one"), HostLedger(store, "each")
    one.update({"a": {"old": 0}, "c": {"old": 0}, "d": {"old": 0}})
    each.update({"a": {"old": 0}, "c": {"old": 0}, "d": {"old": 0}})
    one.update(sets, drops)
    for write in batch:
        each.update(write.sets, write.drops)
    assert HostLedger(store, "one").records() == HostLedger(store, "each").records()


def test_a_failed_shared_write_fails_every_caller() -> None:
    store = SlowerStore()
    ledger = HostLedger(store, "s")
    ledger.records()
    store.fail = True
    start = threading.Barrier(6)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        start.wait()
        try:
            ledger.update({f"a{i}": {"n": i}})
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 6
    store.fail = False
    assert HostLedger(store, "s").records() == {}


class CountingStore(SlowStore):
    """A SlowStore that counts the downloads of each segment."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def read(self, name: str) -> bytes | None:
        with self.lock:
            self.reads[name] = self.reads.get(name, 0) + 1
        return super().read(name)


def test_a_complete_segment_is_downloaded_once_and_never_by_its_writer() -> None:
    store = CountingStore()
    writer = HostLedger(store, "s")
    for i in range(5):
        writer.update({f"k{i}": {"i": i}})
    writer.reload()
    assert writer.records() == {f"k{i}": {"i": i} for i in range(5)}
    writer.compact()  # folds what it wrote: downloads none of it
    assert store.reads == {}
    reader = HostLedger(store, "s")
    assert reader.records() == {f"k{i}": {"i": i} for i in range(5)}
    reader.reload()
    assert len(reader.records()) == 5
    assert list(store.reads.values()) == [1]  # the base, once

    store.hold_next = True  # a write still uploading: not complete, so read again later
    writer.update({"late": {"i": 9}})
    reader.reload()
    assert "late" not in reader.records()
    store.finish_uploads()
    reader.reload()
    assert reader.records()["late"] == {"i": 9}


def big_records(n: int = 600) -> dict[str, dict[str, object]]:
    """Records whose segment is large enough to be remembered once verified."""
    return {f"h/vm/vm{i}": {"applied": {"memory": i, "description": "x" * 100}, "pending": False} for i in range(n)}


def test_a_large_segment_verified_once_is_not_checked_again_by_the_next_reader(tmp_path, monkeypatch) -> None:
    from virtplan.hosts import segment_memo

    monkeypatch.setenv("VIRTPLAN_CACHE_DIR", str(tmp_path))
    store = SlowStore()
    HostLedger(store, "s").update(big_records())
    assert all(len(data) >= segment_memo.MIN_SIZE for data in store.blobs.values())
    checked: list[str] = []
    real = ledger_mod._checksum
    monkeypatch.setattr(ledger_mod, "_checksum", lambda doc: checked.append(doc["stack"]) or real(doc))

    first = HostLedger(store, "s").records()  # another process: parses and checks, and remembers
    assert first == big_records() and checked == ["s"]
    second = HostLedger(store, "s").records()
    assert second == first and checked == ["s"]  # the same bytes: not checked again

    name = store.names()[0]
    doc = json.loads(store.blobs[name])
    doc["set"]["h/vm/vm1"]["pending"] = True  # changed by hand: other bytes, checked (and refused)
    store.blobs[name] = json.dumps(doc).encode()
    assert HostLedger(store, "s").records() == {} and len(checked) == 2


def test_a_broken_memo_is_ignored_and_old_ones_are_removed(tmp_path, monkeypatch) -> None:
    import os
    import time

    from virtplan.hosts import segment_memo

    monkeypatch.setenv("VIRTPLAN_CACHE_DIR", str(tmp_path))
    store = SlowStore()
    HostLedger(store, "s").update(big_records())
    assert HostLedger(store, "s").records() == big_records()
    folder = segment_memo._folder()
    (memo,) = os.listdir(folder)
    with open(os.path.join(folder, memo), "wb") as f:
        f.write(b"\x00not marshal")
    assert HostLedger(store, "s").records() == big_records()  # read and checked as if there were none

    stale = os.path.join(folder, "0" * 64)
    with open(stale, "wb") as f:
        f.write(b"")
    long_ago = time.time() - segment_memo.UNUSED_FOR - 60
    os.utime(stale, (long_ago, long_ago))
    HostLedger(store, "s").update(big_records(700))  # a new large segment: remembered, the unused one removed
    assert HostLedger(store, "s").records() == big_records(700)
    assert not os.path.exists(stale) and len(os.listdir(folder)) == 2


def test_a_view_holds_the_records_as_they_were_without_copying_each() -> None:
    store = SlowStore()
    ledger = HostLedger(store, "s")
    ledger.update({"a": {"v": 1}, "b": {"v": 2}})
    view = ledger.view()
    assert view == ledger.records() == {"a": {"v": 1}, "b": {"v": 2}}
    ledger.update({"c": {"v": 3}}, drops=["a"])
    assert set(view) == {"a", "b"}  # what it was when taken
    assert ledger.view() == {"b": {"v": 2}, "c": {"v": 3}}
    assert ledger.view()["b"] is ledger.view()["b"]  # not copied: the records themselves


def test_records_read_through_one_view_per_host_without_copies() -> None:
    from virtplan.hosts.records import HostRecords, RecordsRead

    ledgers = {uri: HostLedger(SlowStore(), "s") for uri in ("qemu:///a", "qemu:///b")}
    records = HostRecords("s", ledgers.__getitem__)
    records.put("qemu:///a", "a/volume/p/v", id="/p/v")
    records.put("qemu:///b", "b/volume/p/v", id="/other")
    read = RecordsRead(records)
    first = read.get("qemu:///a", "a/volume/p/v")
    assert first == {"id": "/p/v"} and read.get("qemu:///b", "b/volume/p/v") == {"id": "/other"}
    assert read.get("qemu:///a", "a/volume/p/v") is first  # the record itself, not a copy
    assert read.get("qemu:///a", "nowhere") is None
    records.put("qemu:///a", "a/volume/p/w", id="/p/w")
    assert read.get("qemu:///a", "a/volume/p/w") is None  # the view taken at first use
    assert records.get("qemu:///a", "a/volume/p/w") == {"id": "/p/w"}
