"""Hosts connected, and read, before the stack program has run (`virtplan.cli.early`,
`virtplan.hosts.readahead`): only for an unchanged stack file that validated, checked
against the stack once it is loaded, and never changing what observe sees."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from virtplan.cli import early
from virtplan.hosts import connection
from virtplan.hosts.fetch import list_domains, list_volumes, with_key
from virtplan.hosts.readahead import ReadAhead
from virtplan.model import load_stack

STACK = """
from virtplan import VM, Host, Network, Pool, Volume
h = Host("h", uri="test:///default")
net = Network("n", cidr="10.5.0.0/24")
pool = Pool("p", path="/var/tmp/p")
disk = Volume("d", pool=pool, size="1M")
VM("v", memory="64M", disks=[disk], nics=[net])
"""


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("VIRTPLAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("VIRTPLAN_URI", raising=False)
    yield tmp_path / "cache"
    early.forget()


@pytest.fixture
def stack_file(tmp_path: Path) -> Path:
    file = tmp_path / "lab.py"
    file.write_text(STACK)
    return file


def validated(file: Path) -> None:
    """What a command that reads the hosts does once the stack loaded: remember its hosts."""
    early.opening(load_stack(file)).close()


def started() -> dict[str, str]:
    """The hosts being dialled since start-up, by name."""
    return {name: dial.uri for name, dial in early._dials.items()}


def test_a_stack_that_validated_is_connected_at_start_with_its_pools(stack_file: Path, cache: Path) -> None:
    early.start(["plan", str(stack_file)])
    assert started() == {}  # never validated: nothing is known, nothing contacted
    validated(stack_file)
    (hint,) = (cache / "hosts").iterdir()
    assert json.loads(hint.read_text())["hosts"] == [["h", "test:///default", ["p"]]]
    for command in ("plan", "apply", "show", "drift"):
        early.start([command, str(stack_file), "--keep-going"])
        assert started() == {"h": "test:///default"}, command
        early.forget()


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "{file}"],  # validate never contacts a host
        ["graph", "{file}"],
        ["plan", "{file}", "--host", "h=test:///other"],  # another URI may be meant
        ["plan", "--host=h=test:///other", "{file}"],
        ["plan", "plan.json"],
        ["plan", "{file}", "--help"],  # help reads no host
        ["apply", "-h", "{file}"],
        [],
    ],
)
def test_commands_that_do_not_read_the_remembered_hosts_connect_nothing(stack_file: Path, argv: list[str]) -> None:
    validated(stack_file)
    early.start([a.format(file=stack_file) for a in argv])
    assert started() == {}


def test_an_edited_stack_contacts_no_host_before_it_validates(stack_file: Path) -> None:
    validated(stack_file)
    stack_file.write_text(STACK + "VM('broken', memory='lots')\n")  # edited: invalid now
    early.start(["plan", str(stack_file)])
    assert started() == {}
    with pytest.raises(Exception, match="memory"):
        load_stack(stack_file)


def test_another_default_uri_contacts_nothing(stack_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    validated(stack_file)
    monkeypatch.setenv("VIRTPLAN_URI", "test:///elsewhere")
    early.start(["plan", str(stack_file)])
    assert started() == {}


def test_a_run_with_host_overrides_is_not_remembered(stack_file: Path, cache: Path) -> None:
    early.opening(load_stack(stack_file, {"h": "test:///default"}), remember=False).close()
    assert not (cache / "hosts").exists()


def test_a_host_whose_uri_changed_is_opened_again_and_the_stale_connection_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[str] = []

    class Conn:
        def __init__(self, uri: str) -> None:
            self.uri = uri

        def close(self) -> None:
            closed.append(self.uri)

        def getType(self) -> str:
            raise libvirt.libvirtError("no reads in this test")

    monkeypatch.setattr(connection, "connect", lambda uri, host="", dial=None: Conn(uri))
    opening = connection.Opening([("h", "test:///old")])
    opening.add([("h", "test:///new"), ("k", "test:///k")], {})
    assert opening.uris() == {"h": "test:///new", "k": "test:///k"}
    assert opening.take("h", "test:///new").uri == "test:///new"
    opening.close()
    for _ in range(500):
        if sorted(closed) == ["test:///k", "test:///old"]:
            break
        time.sleep(0.01)
    assert sorted(closed) == ["test:///k", "test:///old"]


def test_a_failed_early_attempt_is_tried_again_but_a_timeout_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from virtplan.errors import ConnectionFailed, ConnectionTimedOut

    def refuse(uri: str, host: str = "", dial: object = None) -> None:
        raise (ConnectionTimedOut if "slow" in uri else ConnectionFailed)(f"cannot connect to {uri}")

    monkeypatch.setattr(connection, "connect", refuse)
    opening = connection.Opening([("a", "test:///refused"), ("b", "test:///slow")])
    assert opening.take("a", "test:///refused") is None  # the engine connects again itself
    with pytest.raises(ConnectionTimedOut):
        opening.take("b", "test:///slow")
    assert opening.ahead("a") is None


def test_what_is_read_ahead_is_what_observe_reads_and_is_handed_over_once() -> None:
    conn = libvirt.open("test:///default")
    pool = conn.storagePoolLookupByName("default-pool")
    for i in range(40):  # above the count read over several calls at once
        pool.createXML(f"<volume><name>ra{i}.img</name><capacity>1024</capacity></volume>", 0)
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    ahead = ReadAhead(conn, flags, ["default-pool", "no-such-pool"])

    listing = ahead.domains(flags)
    direct = list_domains(conn, flags)
    assert listing is not None
    assert listing.xmls == direct.xmls
    assert (listing.active, listing.autostart) == (direct.active, direct.autostart)
    assert ahead.domains(flags) is None  # handed over once

    volumes = ahead.volumes("default-pool")
    assert volumes is not None
    assert sorted(volumes) == sorted(list_volumes(pool))
    assert len(volumes) >= 40
    assert ahead.volumes("default-pool") is None
    assert ahead.volumes("no-such-pool") is None  # failed: observe reads (and reports) itself

    other = ReadAhead(conn, flags, [])
    assert other.domains(libvirt.VIR_DOMAIN_XML_INACTIVE) is None  # read with other flags: not used


def test_cancelled_reads_stop() -> None:
    from virtplan.hosts import readahead

    conn = libvirt.open("test:///default")
    ahead = ReadAhead(conn, libvirt.VIR_DOMAIN_XML_INACTIVE, [])
    ahead.cancel()
    with pytest.raises(readahead._Cancelled):
        ahead._unless_cancelled(0)(conn.listAllDomains()[0])


def test_what_was_read_before_the_stack_lock_is_dropped_when_it_is_taken(stack_file: Path) -> None:
    """apply plans against what it reads once it holds the lock, never against a read ahead
    made while another apply may still have been changing the hosts."""
    from virtplan.engine import Engine

    stack = load_stack(stack_file)
    opening = early.opening(stack)
    with Engine(stack, opening=opening) as engine:
        engine.connection("h")
        with engine.locked():
            assert opening.ahead("h") is None
    opening = early.opening(load_stack(stack_file))
    with Engine(load_stack(stack_file), opening=opening) as engine:
        engine.connection("h")
        assert opening.ahead("h") is not None  # no lock taken: handed over to observe


def test_the_connection_dialled_at_start_up_is_the_one_used(stack_file: Path) -> None:
    validated(stack_file)
    early.start(["plan", str(stack_file)])
    (dial,) = early._dials.values()
    opening = early.opening(load_stack(stack_file))
    assert early._dials == {}  # handed over
    assert opening.take("h", "test:///default") is dial.result(5)
    opening.close()


def test_dials_for_hosts_the_stack_no_longer_has_or_for_other_uris_are_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from virtplan.hosts.dialing import Dial

    real = connection.connect
    monkeypatch.setattr(  # the host moved elsewhere is not really connected to
        connection, "connect", lambda uri, host="", dial=None: real(uri, host, dial=dial) if dial else object()
    )
    kept, moved, gone = Dial("test:///default"), Dial("test:///default"), Dial("test:///default")
    opening = connection.Opening()
    opening.add([("h", "test:///default"), ("m", "test:///elsewhere")], {}, {"h": kept, "m": moved, "x": gone})
    assert (kept._abandoned, moved._abandoned, gone._abandoned) == (False, True, True)
    assert opening.take("h", "test:///default") is kept.result(5)
    opening.close()


def test_the_ledger_is_read_ahead_for_the_stack_and_pool_asked_only() -> None:
    from virtplan.hosts.ledger import HostLedger

    conn = libvirt.open("test:///default")
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE
    where = ("virtplan", "/var/lib/libvirt/virtplan", "lab")
    ahead = ReadAhead(conn, flags, [], where)
    ledger = ahead.ledger(*where)
    assert isinstance(ledger, HostLedger) and ledger.stack_key == "lab"
    assert ahead.ledger(*where) is None  # handed over once
    assert ReadAhead(conn, flags, [], where).ledger("virtplan", "/var/lib/libvirt/virtplan", "other") is None
    assert ReadAhead(conn, flags, []).ledger(*where) is None  # none was read


def test_a_ledger_read_ahead_is_not_used_once_the_lock_is_held(stack_file: Path) -> None:
    from virtplan.engine import Engine

    stack = load_stack(stack_file)
    with Engine(stack, opening=early.opening(stack)) as engine:
        engine.connection("h")
        assert engine._read_ahead("h") is not None  # taken before the lock...
        with engine.locked():
            assert engine._read_ahead("h") is None  # ...and dropped once it is held


def test_the_dial_at_start_up_reads_ahead_what_the_last_run_read_and_the_opening_keeps_it(stack_file: Path) -> None:
    validated(stack_file)
    early.start(["plan", str(stack_file)])
    (dial,) = early._dials.values()
    dial.result(5)
    started_reads = dial.ahead
    assert isinstance(started_reads, ReadAhead) and started_reads.pools == ["p"]  # as soon as it connected
    opening = early.opening(load_stack(stack_file))
    opening.take("h", "test:///default")
    assert opening.ahead("h") is started_reads  # the same pools: kept, not read twice
    opening.close()


def test_reads_started_for_other_pools_than_the_stack_names_now_are_replaced(stack_file: Path, cache: Path) -> None:
    validated(stack_file)
    (hint_file,) = (cache / "hosts").iterdir()
    hint = json.loads(hint_file.read_text())
    hint["hosts"][0][2] = ["elsewhere"]  # what a run whose program chose other pools read
    hint_file.write_text(json.dumps(hint))
    early.start(["plan", str(stack_file)])
    (dial,) = early._dials.values()
    dial.result(5)
    stale = dial.ahead
    assert isinstance(stale, ReadAhead) and stale.pools == ["elsewhere"]
    opening = early.opening(load_stack(stack_file), remember=False)
    opening.take("h", "test:///default")
    reads = opening.ahead("h")
    assert reads is not None and reads is not stale and reads.pools == ["p"]
    assert stale._cancelled.is_set()
    opening.close()


def test_an_abandoned_dial_stops_the_reads_it_started() -> None:
    from virtplan.hosts.dialing import Dial

    dial = Dial("test:///default", then=lambda conn: ReadAhead(conn, libvirt.VIR_DOMAIN_XML_INACTIVE, []))
    dial.result(5)
    reads = dial.ahead
    assert isinstance(reads, ReadAhead)
    dial.abandon()
    assert reads._cancelled.is_set() and dial.ahead is None


class SlowConnection:
    """A connection whose domain listing waits for `release`; records what is called."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def listAllDomains(self, flags: int = 0) -> list[object]:
        self.calls.append("listAllDomains")
        self.release.wait(10)
        return []

    def close(self) -> int:
        self.calls.append("close")
        return 0


def assert_closed_only_once_released(conn: SlowConnection, call: str) -> None:
    """Once a read is inside `call`, closing `conn` waits for it: not closed until the call
    is released, closed then."""
    from virtplan.hosts.readahead import close_connection

    for _ in range(500):
        if call in conn.calls:
            break
        time.sleep(0.01)
    closing = threading.Thread(target=close_connection, args=(conn,))
    closing.start()
    time.sleep(0.1)
    assert "close" not in conn.calls
    conn.release.set()
    closing.join(10)
    assert conn.calls[-1] == "close"


def test_a_connection_is_closed_only_once_the_reads_on_it_finished_and_none_starts_after() -> None:
    from virtplan.hosts.readahead import close_connection

    busy = SlowConnection()
    ReadAhead(busy, 0, [])
    assert_closed_only_once_released(busy, "listAllDomains")  # libvirt would free what the running call uses

    stuck = SlowConnection()
    ReadAhead(stuck, 0, [])
    close_connection(stuck, wait=0.2)  # a call that does not return: the connection is left open
    assert "close" not in stuck.calls
    stuck.release.set()

    closed = SlowConnection()
    close_connection(closed)
    late = ReadAhead(closed, 0, ["p"], ("virtplan", "/x", "lab"))  # e.g. started as the opening closed
    assert late.domains(0) is None and late.volumes("p") is None and late.ledger("virtplan", "/x", "lab") is None
    assert closed.calls == ["close"]


class SlowLedgerHost(SlowConnection):
    """A host whose records pool answers only after `release` (domains list at once)."""

    def listAllDomains(self, flags: int = 0) -> list[object]:
        return []

    def getType(self) -> str:
        return "QEMU"

    def storagePoolLookupByName(self, name: str) -> object:
        self.calls.append("storagePoolLookupByName")
        self.release.wait(10)
        raise libvirt.libvirtError("no records pool in this test")


def test_a_read_still_running_is_waited_for_even_once_nothing_refers_to_its_reads() -> None:
    import gc

    host = SlowLedgerHost()
    ReadAhead(host, 0, [], ("virtplan", "/var/lib/libvirt/virtplan", "lab"))  # dropped at once
    gc.collect()
    assert_closed_only_once_released(host, "storagePoolLookupByName")  # the ledger read is still inside it


def test_what_a_reader_process_did_not_send_is_read_on_the_connection_and_what_is_gone_is_none() -> None:
    conn = libvirt.open("test:///default")
    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    pool = conn.storagePoolLookupByName("default-pool")
    volume = pool.createXML("<volume><name>fill.img</name><capacity>1024</capacity></volume>", 0)
    ahead = ReadAhead(conn, flags, [])
    dom = conn.lookupByName("test")
    assert ahead._fill_domain("test", dom.UUIDString()) == with_key(dom.XMLDesc(flags))
    assert ahead._fill_domain("gone", "00000000-0000-4000-8000-000000000001") == (None, None)
    assert ahead._fill_volume("default-pool", "fill.img") == with_key(volume.XMLDesc(0))
    assert ahead._fill_volume("default-pool", "gone.img") == (None, None)
    assert ahead._fill_volume("no-such-pool", "fill.img") == (None, None)
