"""`virtplan.hosts.connection.Outcome`: set once by one thread, waited for by others."""

import threading

import pytest

from virtplan.hosts.connection import Outcome


def test_a_value_set_later_is_waited_for():
    outcome: Outcome[int] = Outcome()
    threading.Timer(0.05, outcome.set_result, args=(7,)).start()
    assert outcome.result() == 7
    assert outcome.exception() is None


def test_an_exception_is_handed_over_and_raised():
    outcome: Outcome[int] = Outcome()
    error = ValueError("no")
    outcome.set_exception(error)
    assert outcome.exception() is error
    with pytest.raises(ValueError, match="no"):
        outcome.result()


def test_callbacks_run_once_set_or_at_once_if_set_already():
    outcome: Outcome[str] = Outcome()
    seen: list[str] = []
    outcome.add_done_callback(lambda o: seen.append("before " + o.result()))
    assert seen == []
    outcome.set_result("x")
    outcome.add_done_callback(lambda o: seen.append("after " + o.result()))
    assert seen == ["before x", "after x"]


def test_a_callback_that_raises_does_not_stop_the_others_nor_the_setter():
    outcome: Outcome[int] = Outcome()
    seen: list[int] = []

    def boom(_: Outcome[int]) -> None:
        raise RuntimeError("callback failed")

    outcome.add_done_callback(boom)
    outcome.add_done_callback(lambda o: seen.append(o.result()))
    outcome.set_result(1)  # does not raise
    assert seen == [1]
