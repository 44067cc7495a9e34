"""Observing a pool while a parallel call deletes one of its volumes (what `pulumi destroy` does)."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from virtplan.hosts.fetch import list_volumes
from virtplan.hosts.observe import HostState, _read_volumes

VOLUME_XML = "<volume><name>{0}</name><capacity>1048576</capacity><target><path>/p/{0}</path></target></volume>"


def libvirt_error(code: int) -> libvirt.libvirtError:
    exc = libvirt.libvirtError("simulated")
    exc.err = (code, 0, "simulated", 0, None, None, None, 0, 0)
    return exc


class Vol:
    """A listed volume; with `error`, reading it fails so (e.g. deleted since it was listed)."""

    def __init__(self, name: str, error: int | None = None) -> None:
        self._name, self.error = name, error

    def name(self) -> str:
        return self._name

    def XMLDesc(self, _flags: int) -> str:
        if self.error is not None:
            raise libvirt_error(self.error)
        return VOLUME_XML.format(self._name)

    def path(self) -> str:
        raise AssertionError("the path is read from the volume's XML, not with one more call per volume")


class Pool:
    def __init__(self, *vols: Vol) -> None:
        self.vols = vols

    def listAllVolumes(self) -> list[Any]:
        return list(self.vols)


def state() -> HostState:
    return HostState("h", "test:///default", None)  # type: ignore[arg-type]


def test_a_volume_deleted_after_listing_is_skipped() -> None:
    found = state()
    _read_volumes(list_volumes(Pool(Vol("a"), Vol("gone", libvirt.VIR_ERR_NO_STORAGE_VOL), Vol("b"))), "p", found)
    assert sorted(found.objects) == [("volume", "p/a"), ("volume", "p/b")]
    assert found.objects[("volume", "p/a")].uuid == "/p/a"


def test_other_errors_still_fail() -> None:
    with pytest.raises(libvirt.libvirtError):
        list_volumes(Pool(Vol("a", libvirt.VIR_ERR_INTERNAL_ERROR)))


class PoolFailing:
    """A pool whose state cannot be read (with libvirt error `code`)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def isActive(self) -> int:
        raise libvirt_error(self.code)


def test_a_pool_deleted_after_listing_has_no_volumes_to_read() -> None:
    from virtplan.hosts.fetch import pool_active

    assert pool_active(PoolFailing(libvirt.VIR_ERR_NO_STORAGE_POOL)) is False
    with pytest.raises(libvirt.libvirtError):
        pool_active(PoolFailing(libvirt.VIR_ERR_INTERNAL_ERROR))


def lost_error() -> libvirt.libvirtError:
    """What libvirt-python raises when the failed call's error was reset before it read it
    (a libvirt object freed in between, e.g. by the garbage collector): no code, no message."""
    exc = libvirt.libvirtError("virStorageVolLookupByName() failed")
    exc.err = None
    return exc


class Flaky:
    """Fails with `first` on the first call, then as `then` (None: returns "ok")."""

    def __init__(self, first: libvirt.libvirtError, then: libvirt.libvirtError | None = None) -> None:
        self.calls, self.first, self.then = 0, first, then

    def __call__(self) -> str:
        self.calls += 1
        if self.calls == 1:
            raise self.first
        if self.then is not None:
            raise self.then
        return "ok"


def test_a_call_whose_error_was_lost_is_made_again_and_says_what_happened() -> None:
    from virtplan.hosts.fetch import again_if_lost, inactive_xml

    assert again_if_lost(Flaky(lost_error())) == "ok"
    gone = Flaky(lost_error(), libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL))
    with pytest.raises(libvirt.libvirtError) as raised:
        again_if_lost(gone)
    assert raised.value.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL and gone.calls == 2
    coded = Flaky(libvirt_error(libvirt.VIR_ERR_INTERNAL_ERROR))
    with pytest.raises(libvirt.libvirtError):
        again_if_lost(coded)
    assert coded.calls == 1  # a real error is not hidden by a second attempt

    class Deleted:  # deleted since it was listed, and the first answer lost its code
        def __init__(self) -> None:
            self.xml = Flaky(lost_error(), libvirt_error(libvirt.VIR_ERR_NO_STORAGE_VOL))

        def XMLDesc(self, _flags: int) -> str:
            return self.xml()

    assert inactive_xml(Deleted(), 0) is None  # recognised as gone, not a failed read


def test_volumes_already_parsed_are_taken_from_the_spec_cache_and_a_changed_one_is_parsed_again(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from virtplan.hosts import observe
    from virtplan.hosts.speccache import SpecCache

    cache = SpecCache(tmp_path / "specs.json")
    first = state()
    _read_volumes(list_volumes(Pool(Vol("a"), Vol("b"))), "p", first, cache)
    cache.save()

    parsed: list[str] = []
    real = observe.ET.fromstring
    monkeypatch.setattr(observe.ET, "fromstring", lambda xml: parsed.append(xml) or real(xml))
    again = state()
    _read_volumes(list_volumes(Pool(Vol("a"), Vol("b"))), "p", again, SpecCache(tmp_path / "specs.json"))
    assert parsed == []  # both from the cache (a new process: the file)
    assert {k: (o.uuid, o.spec) for k, o in again.objects.items()} == {
        k: (o.uuid, o.spec) for k, o in first.objects.items()
    }

    class Grown(Vol):
        def XMLDesc(self, _flags: int) -> str:
            return super().XMLDesc(_flags).replace("1048576", "2097152")

    grown = state()
    _read_volumes(list_volumes(Pool(Grown("a"))), "p", grown, SpecCache(tmp_path / "specs.json"))
    assert len(parsed) == 1 and grown.objects[("volume", "p/a")].spec["capacity"] == 2097152
