"""The stop signals' order of things (deploy/teardown.py), with the handler called as
the kernel would call it; tests/e2e/test_starters.py sends real signals to real starters."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest

from deploy import teardown


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has had no stop signal yet (this test run's own handlers stay)."""
    monkeypatch.setattr(teardown, "_state", teardown._State())


def test_it_raises_stopping_where_the_starter_is_and_ignores_later_signals() -> None:
    with pytest.raises(teardown.Stopping) as raised:
        teardown._on_signal(signal.SIGTERM, None)
    assert raised.value.signum == signal.SIGTERM
    assert raised.value.exit_code == 143
    assert isinstance(raised.value, KeyboardInterrupt)
    teardown._on_signal(signal.SIGINT, None)  # already stopping: nothing raised


def test_it_holds_a_signal_until_the_stop_under_way_has_finished() -> None:
    finished: list[str] = []

    def stops_nested() -> None:
        with teardown.deferred():
            with teardown.deferred():
                teardown._on_signal(signal.SIGHUP, None)
                finished.append("inner")
            finished.append("outer")

    with pytest.raises(teardown.Stopping) as raised:
        stops_nested()
    assert finished == ["inner", "outer"]
    assert raised.value.signum == signal.SIGHUP


def test_it_raises_a_held_signal_even_when_the_section_failed() -> None:
    def stop_failing() -> None:
        with teardown.deferred():
            teardown._on_signal(signal.SIGTERM, None)
            raise RuntimeError("a stop that failed")

    with pytest.raises(teardown.Stopping) as raised:
        stop_failing()
    assert isinstance(raised.value.__context__, RuntimeError)


def test_it_stops_in_reverse_order_and_removes_its_directories_when_signalled() -> None:
    stopped: list[str] = []
    made: list[Path] = []

    def starter() -> None:
        with teardown.Stops() as stops:
            made.append(stops.directory("pt-teardown-"))
            stops.callback(stopped.append, "first started")
            stops.callback(stopped.append, "last started")
            # The signal lands during the stops: they all still run, then it is raised.
            stops.callback(teardown._on_signal, signal.SIGTERM, None)

    with pytest.raises(teardown.Stopping):
        starter()
    assert stopped == ["last started", "first started"]
    assert not made[0].exists()
