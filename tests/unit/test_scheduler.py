"""The scheduler: the waiting line, capacity, start limits and the wait estimate.
No processes, no database, no event loop: time is a number the test sets."""
from __future__ import annotations

import pytest

from sessions.errors import AddressLimitError, CapacityError, RateLimitedError
from sessions.scheduler import Scheduler, SchedulerConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scheduler(clock: Clock | None = None, **overrides: object) -> Scheduler:
    settings: dict[str, object] = {"capacity": 2, "queue_max": 3, "live_per_address": 50,
                                   "session_max_s": 600.0}
    settings.update(overrides)
    return Scheduler(SchedulerConfig(**settings), clock=clock or Clock())  # type: ignore[arg-type]


def test_it_places_visits_until_capacity_then_lines_them_up_in_order() -> None:
    line = scheduler()
    assert [line.admit(session_id=f"s{n}", owner=f"o{n}") for n in range(5)] == [
        False, False, True, True, True]
    assert line.placed_count == 2 and line.queue_length == 3
    assert [line.position(f"s{n}") for n in range(5)] == [None, None, 1, 2, 3]
    assert line.waiting == ["s2", "s3", "s4"]


def test_it_gives_a_freed_machine_to_the_first_in_line_and_moves_the_rest_up() -> None:
    line = scheduler()
    for n in range(5):
        line.admit(session_id=f"s{n}", owner=f"o{n}")
    assert line.release("s1") == ["s2"]
    assert line.placed_count == 2
    assert [line.position(f"s{n}") for n in (2, 3, 4)] == [None, 1, 2]
    # Someone giving up their place promotes nobody; the others move up.
    assert line.release("s3") == []
    assert line.position("s4") == 1
    assert line.release("s0") == ["s4"]
    assert line.release("unknown") == []


def test_it_refuses_with_retry_after_when_the_line_is_full() -> None:
    clock = Clock()
    line = scheduler(clock, capacity=1, queue_max=1)
    line.admit(session_id="running", owner="a")
    line.visit_started("running", started=clock.now, expires=clock.now + 600)
    line.admit(session_id="waiting", owner="b")
    with pytest.raises(CapacityError) as full:
        line.admit(session_id="third", owner="c")
    # The second in line waits for the running visit and one more usual visit.
    assert full.value.retry_after_s == int(line.wait_s(2))
    assert 5 <= full.value.retry_after_s <= 3600
    assert line.queue_length == 1 and line.position("third") is None
    # A refused start counted against nobody: once there is room, c gets in.
    line.release("waiting")
    assert line.admit(session_id="third", owner="c") is True


def test_it_estimates_the_wait_from_running_visits_and_their_time_limits() -> None:
    clock = Clock()
    line = scheduler(clock, capacity=2, session_max_s=600.0)
    assert line.wait_s(1) == 0.0  # nothing runs: no wait
    line.admit(session_id="a", owner="a")
    line.admit(session_id="b", owner="b")
    line.visit_started("a", started=clock.now, expires=clock.now + 60)  # ends at its limit
    line.visit_started("b", started=clock.now - 100, expires=clock.now + 500)
    # Usual visit 300 s: a by its limit in 60 s, b after 300 - 100 = 200 s, then a round later.
    assert line.wait_s(1) == pytest.approx(60)
    assert line.wait_s(2) == pytest.approx(200)
    assert line.wait_s(3) == pytest.approx(60 + 300)
    # b lasted 200 s, which teaches the usual length: 0.8 * 300 + 0.2 * 200 = 280 s.
    clock.now += 100
    line.release("b")
    line.admit(session_id="c", owner="c")  # b's place: c's machine is just starting
    assert line.wait_s(1) == 0.0  # a is past its time limit: any moment now
    assert line.wait_s(2) == pytest.approx(280)


def test_it_caps_live_visits_per_address() -> None:
    line = scheduler(capacity=1, queue_max=5, live_per_address=2)
    line.admit(session_id="a1", owner="a1", address="10.0.0.1")
    line.admit(session_id="a2", owner="a2", address="10.0.0.1")
    with pytest.raises(AddressLimitError) as capped:
        line.admit(session_id="a3", owner="a3", address="10.0.0.1")
    assert capped.value.retry_after_s == 60
    line.admit(session_id="b1", owner="b1", address="10.0.0.2")  # another network
    line.release("a2")
    assert line.admit(session_id="a3", owner="a3", address="10.0.0.1") is True


def test_it_limits_starts_per_browser_and_per_address_within_the_window() -> None:
    clock = Clock()
    line = scheduler(clock, capacity=100, queue_max=100, starts_per_browser=2,
                     starts_per_address=3, start_window_s=60.0)
    line.admit(session_id="1", owner="browser", address="net")
    clock.now += 10
    line.admit(session_id="2", owner="browser", address="net")
    with pytest.raises(RateLimitedError) as limited:
        line.admit(session_id="3", owner="browser", address="net")
    assert limited.value.retry_after_s == 50  # the first start leaves the window then
    line.admit(session_id="4", owner="other", address="net")
    with pytest.raises(RateLimitedError):
        line.admit(session_id="5", owner="third", address="net")
    clock.now += 50
    line.forget_old()
    line.admit(session_id="6", owner="browser", address="net")


def test_it_empties_the_line_without_promoting_anyone() -> None:
    line = scheduler(capacity=1)
    for n in range(3):
        line.admit(session_id=f"s{n}", owner=f"o{n}")
    assert line.line_clear() == ["s1", "s2"]
    assert line.release("s0") == []
    assert line.queue_length == 0 and line.placed_count == 0
