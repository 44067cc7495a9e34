"""Which hosts a forked child may read (`virtplan.hosts.reader.readable_apart`)."""

from __future__ import annotations

import threading

import pytest

from virtplan.hosts import reader


@pytest.mark.parametrize(
    ("uri", "apart"),
    [
        ("qemu:///system", True),
        ("qemu:///session", True),
        ("qemu+unix:///system?socket=/run/x/libvirt-sock", True),
        ("lxc:///system", True),
        ("qemu+ssh://root@kvm1/system", False),  # a second ssh handshake: read in this process
        ("qemu+tls://kvm1/system", False),
        ("qemu://kvm1/system", False),  # TLS by default
        ("qemu+unix://kvm1/system", False),  # a host part: not this machine's socket
        ("test:///default", False),  # its state lives in this process: the child has a copy
        ("vbox:///session", False),
        ("not a uri", False),
    ],
)
def test_only_a_local_daemons_socket_is_read_apart(uri: str, apart: bool, monkeypatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert reader.readable_apart(uri) is apart


def test_never_once_a_thread_runs(monkeypatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 2)  # forking copies locks other threads may hold
    assert reader.readable_apart("qemu:///system") is False
