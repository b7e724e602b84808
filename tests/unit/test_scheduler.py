"""The scheduler: placement over nodes, the one waiting line, the rules at a start
and the wait estimate, on the database (SQLite here; the same queries run on
PostgreSQL in tests/e2e/test_cluster.py). No processes and no event loop."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from portal.models import DiskImage, Exhibit
from sessions.errors import AddressLimitError, CapacityError, SessionExistsError
from sessions.models import Node, VisitorSession
from sessions.placement.scheduler import (
    SchedulerConfig,
    StartLimiter,
    line_ids,
    line_place,
    line_places,
    line_position,
    line_take,
    placed_pending,
    visit_place,
    wait_s,
)

pytestmark = pytest.mark.django_db

State = VisitorSession.State


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def exhibit() -> Exhibit:
    image = DiskImage.objects.create(sha256="0" * 64, path="/nowhere/master.img", size_bytes=1)
    return Exhibit.objects.create(slug="freedos", title="FreeDOS", image=image)


def config(node: str = "a", **overrides: Any) -> SchedulerConfig:
    settings: dict[str, Any] = {"node": node, "capacity": 2, "queue_max": 3,
                                "live_per_address": 50, "session_max_s": 600.0}
    settings.update(overrides)
    return SchedulerConfig(**settings)


def node_alive(name: str, capacity: int, *, silent_s: float = 0.0) -> None:
    when = timezone.now() - timedelta(seconds=silent_s)
    Node.objects.update_or_create(name=name, defaults={
        "capacity": capacity, "started_at": when, "heartbeat_at": when})


def place(exhibit: Exhibit, settings: SchedulerConfig, session_id: str, *, owner: str | None = None,
          address: str = "", limiter: StartLimiter | None = None) -> VisitorSession:
    return visit_place(settings, limiter or StartLimiter(window_s=60.0), session_id=session_id,
                       exhibit_id=exhibit.pk, owner=owner or f"owner-{session_id}", address=address,
                       accelerator="kvm", run_dir=f"/run/{session_id}")


def where(session_id: str) -> tuple[str, str]:
    row = VisitorSession.objects.get(id=session_id)
    return row.state, row.node


def end(session_id: str) -> None:
    VisitorSession.objects.filter(id=session_id).update(state=State.ENDED, ended_at=timezone.now())


def test_it_places_visits_until_capacity_then_lines_them_up_in_order(exhibit: Exhibit) -> None:
    here = config()
    rows = [place(exhibit, here, f"s{n}") for n in range(5)]
    assert [row.state for row in rows] == ["starting", "starting", "queued", "queued", "queued"]
    assert {row.node for row in rows} == {"a"}
    assert [line_position(row) for row in rows] == [None, None, 1, 2, 3]
    assert line_ids() == ["s2", "s3", "s4"]
    # Placed here, the row is already this node's own, with its run directory.
    assert rows[0].run_dir == "/run/s0"
    assert placed_pending(here) == []


def test_a_freed_place_goes_to_the_first_in_line_and_the_rest_move_up(exhibit: Exhibit) -> None:
    here = config()
    for n in range(5):
        place(exhibit, here, f"s{n}")
    assert line_take(here) == []  # nothing is free
    end("s1")
    assert line_take(here) == [("s2", "a")]
    assert where("s2") == ("starting", "a")
    assert [line_position(VisitorSession.objects.get(id=i)) for i in ("s3", "s4")] == [1, 2]
    # Someone giving up their place frees no machine; the others move up.
    end("s3")
    assert line_take(here) == []
    assert line_position(VisitorSession.objects.get(id="s4")) == 1


def test_it_places_a_visit_on_the_live_node_with_the_most_room(exhibit: Exhibit) -> None:
    here = config(capacity=2)
    node_alive("b", capacity=4)
    node_alive("dead", capacity=100, silent_s=60)
    node_alive("draining", capacity=0)
    nodes = [place(exhibit, here, f"s{n}").node for n in range(6)]
    # Here first on a tie, then whichever is emptier in proportion; never the
    # silent node or one that takes nothing.
    assert nodes == ["a", "b", "b", "a", "b", "b"]
    # Placed elsewhere: that node has not taken it in yet.
    assert VisitorSession.objects.get(id="s1").run_dir == ""
    assert placed_pending(config("b", capacity=4)) == ["s1", "s2", "s4", "s5"]
    assert place(exhibit, here, "s6").state == "queued"


def test_a_node_with_a_free_place_takes_the_first_in_line_from_another(exhibit: Exhibit) -> None:
    here, other = config("a", capacity=1), config("b", capacity=1)
    place(exhibit, here, "running-a")
    place(exhibit, here, "waiting")  # b has no row yet: held in line by a
    assert where("waiting") == ("queued", "a")
    node_alive("b", capacity=1)
    assert line_take(other) == [("waiting", "a")]
    assert where("waiting") == ("starting", "b")
    assert placed_pending(other) == ["waiting"]
    assert line_take(here) == []


def test_a_new_visit_waits_behind_the_line_even_where_a_place_is_free(exhibit: Exhibit) -> None:
    here = config(capacity=1)
    place(exhibit, here, "running")
    place(exhibit, here, "first")
    end("running")
    # The freed place is first's (the node takes it at its next pull), not a newcomer's.
    assert place(exhibit, here, "newcomer").state == "queued"
    assert line_take(here) == [("first", "a")]


def test_it_refuses_with_retry_after_when_the_line_is_full(exhibit: Exhibit) -> None:
    here = config(capacity=1, queue_max=1)
    place(exhibit, here, "running")
    VisitorSession.objects.filter(id="running").update(
        state=State.RUNNING, started_at=timezone.now(),
        expires_at=timezone.now() + timedelta(seconds=600))
    place(exhibit, here, "waiting")
    with pytest.raises(CapacityError) as full:
        place(exhibit, here, "third")
    # The second in line waits for the running visit and one more usual visit.
    assert full.value.retry_after_s == pytest.approx(int(wait_s(here, 2)), abs=1)
    assert 5 <= full.value.retry_after_s <= 3600
    assert not VisitorSession.objects.filter(id="third").exists()


def test_it_keeps_one_live_visit_per_browser_whichever_node_records_it(exhibit: Exhibit) -> None:
    place(exhibit, config("a"), "first", owner="browser")
    with pytest.raises(SessionExistsError) as exists:
        place(exhibit, config("b"), "second", owner="browser")
    assert exists.value.session_id == "first"
    # The database itself allows one: two nodes checking at the same moment cannot both write.
    with pytest.raises(IntegrityError), transaction.atomic():
        VisitorSession.objects.create(id="raced", exhibit=exhibit, owner="browser", state=State.STARTING)
    end("first")
    assert place(exhibit, config("b"), "again", owner="browser").state == "starting"


def test_it_estimates_the_wait_from_placed_visits_and_their_time_limits(exhibit: Exhibit) -> None:
    here = config(capacity=2, session_max_s=600.0)
    assert wait_s(here, 1) == 0.0  # nothing runs: no wait
    now = timezone.now()
    place(exhibit, here, "a")
    place(exhibit, here, "b")
    VisitorSession.objects.filter(id="a").update(  # ends at its limit
        state=State.RUNNING, started_at=now, expires_at=now + timedelta(seconds=60))
    VisitorSession.objects.filter(id="b").update(
        state=State.RUNNING, started_at=now - timedelta(seconds=100),
        expires_at=now + timedelta(seconds=500))
    # Usual visit 300 s: a by its limit in 60 s, b after 300 - 100 = 200 s, then a round later.
    assert wait_s(here, 1) == pytest.approx(60, abs=1)
    assert wait_s(here, 2) == pytest.approx(200, abs=1)
    assert wait_s(here, 3) == pytest.approx(60 + 300, abs=1)
    # Finished visits teach the usual length: one of 100 s.
    VisitorSession.objects.filter(id="b").update(state=State.ENDED, ended_at=now)
    assert wait_s(here, 2) == pytest.approx(60 + 100, abs=1)


def test_the_whole_lines_places_cost_three_queries_however_long_the_line(
    exhibit: Exhibit, django_assert_num_queries: Any
) -> None:
    here = config(capacity=2, queue_max=40, session_max_s=600.0)
    now = timezone.now()
    for session_id in ("a", "b"):
        place(exhibit, here, session_id)
    VisitorSession.objects.filter(id="a").update(
        state=State.RUNNING, started_at=now, expires_at=now + timedelta(seconds=60))
    waiting = [f"w{number:02}" for number in range(30)]
    for session_id in waiting:
        assert place(exhibit, here, session_id).state == State.QUEUED
    # The line, the placed visits and the usual visit length: not once per visitor.
    with django_assert_num_queries(3):
        places = line_places(here)
    assert list(places) == waiting
    for session_id in waiting:
        position, wait = places[session_id]
        alone = line_place(here, VisitorSession.objects.get(id=session_id))
        assert position == alone[0]
        assert wait == pytest.approx(alone[1], abs=1)
    assert places["w00"][0] == 1
    assert places["w00"][1] == pytest.approx(60, abs=1)
    assert places["w29"][0] == 30


def test_it_caps_live_visits_per_address(exhibit: Exhibit) -> None:
    here = config(capacity=1, queue_max=5, live_per_address=2)
    place(exhibit, here, "a1", address="10.0.0.1")
    place(exhibit, config("b"), "a2", address="10.0.0.1")  # counted whichever node took it
    with pytest.raises(AddressLimitError) as capped:
        place(exhibit, here, "a3", address="10.0.0.1")
    assert capped.value.retry_after_s == 60
    place(exhibit, here, "b1", address="10.0.0.2")  # another network
    end("a2")
    assert place(exhibit, here, "a3", address="10.0.0.1").state == "queued"


def test_a_refused_start_counts_against_nobody(exhibit: Exhibit) -> None:
    clock = Clock()
    limiter = StartLimiter(window_s=60.0, clock=clock)
    here = config(capacity=1, queue_max=0, starts_per_browser=1)
    place(exhibit, here, "running", owner="other", limiter=limiter)
    with pytest.raises(CapacityError):
        place(exhibit, here, "refused", owner="browser", limiter=limiter)
    end("running")
    assert place(exhibit, here, "later", owner="browser", limiter=limiter).state == "starting"


def test_it_limits_starts_per_browser_and_per_address_within_the_window() -> None:
    clock = Clock()
    limits = StartLimiter(window_s=60.0, clock=clock)
    browser = {"browser:b": 2, "address:net": 3}
    assert limits.take(browser) is None
    clock.now += 10
    assert limits.take(browser) is None
    assert limits.take(browser) == pytest.approx(50)  # the first start leaves the window then
    assert limits.take({"browser:other": 2, "address:net": 3}) is None
    assert limits.take({"browser:third": 2, "address:net": 3}) is not None
    clock.now += 50
    limits.forget_old()
    assert limits.take(browser) is None


def test_a_visit_whose_files_are_here_is_started_here_only(exhibit: Exhibit) -> None:
    here, other = config("a", capacity=1), config("b", capacity=1)
    node_alive("b", capacity=1)

    def resume(session_id: str) -> VisitorSession:
        return visit_place(here, StartLimiter(window_s=60.0), session_id=session_id, exhibit_id=exhibit.pk,
                           owner=f"owner-{session_id}", address="", accelerator="kvm",
                           run_dir=f"/run/{session_id}/saved", here_only=True)

    place(exhibit, here, "running-a")
    # b has room, but the saved visit's files are on a: it waits for a's place.
    assert resume("saved").state == "queued"
    place(exhibit, here, "plain")
    assert line_take(other) == [("plain", "a")]
    VisitorSession.objects.filter(id="running-a").update(state="ended")
    assert line_take(here) == [("saved", "a")]
    assert where("saved") == ("starting", "a")
