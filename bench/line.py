"""What telling the waiting line its places costs, after one change in it.

A visit that ends (or a visitor who gives up a place) moves everyone behind; each
waiting page is told its new place in line and its estimated wait. Measured on the
embedded database (SQLite, as `make run` has it) with the demo's capacity of
placed visits (454, this host's default) and lines of 100, 300 and 900 visitors:

- reference: each waiting page reading its own place (`scheduler.line_place`: its
  position counted, the placed visits and recent visits read), as every page did
  before, once per visitor;
- the portal: the whole line's places read once (`scheduler.line_places`), handed to
  each page with the change.

Both in the same process on the same rows; time and database queries per change.
"""
from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from bench.common import QUICK, Table, median, portal_environment, ratio, runs, write_results

PLACED = 454
LINES = [100] if QUICK else [100, 300, 900]
REPEATS = runs(5, 2)


def rows(placed: int, waiting: int) -> Any:
    from django.utils import timezone

    from portal.models import DiskImage, Exhibit
    from sessions.models import VisitorSession

    State = VisitorSession.State
    VisitorSession.objects.all().delete()
    image, _ = DiskImage.objects.get_or_create(sha256="0" * 64, defaults={
        "path": "/nowhere/master.img", "size_bytes": 1})
    exhibit, _ = Exhibit.objects.get_or_create(slug="line", defaults={"title": "Line", "image": image})
    now = timezone.now()
    made = []
    for number in range(placed):
        started = now - timedelta(seconds=random.uniform(0, 1500))
        made.append(VisitorSession(id=f"p{number:05}", exhibit=exhibit, owner=f"p{number}",
                                   state=State.RUNNING, node="bench", started_at=started,
                                   expires_at=started + timedelta(seconds=1800)))
    for number in range(50):
        started = now - timedelta(seconds=3600)
        made.append(VisitorSession(id=f"e{number:05}", exhibit=exhibit, owner=f"e{number}",
                                   state=State.ENDED, node="bench", started_at=started,
                                   ended_at=started + timedelta(seconds=random.uniform(60, 900))))
    for number in range(waiting):
        made.append(VisitorSession(id=f"w{number:05}", exhibit=exhibit, owner=f"w{number}",
                                   state=State.QUEUED))
    VisitorSession.objects.bulk_create(made)
    return list(VisitorSession.objects.filter(state=State.QUEUED).order_by("created_at", "id"))


def timed(step: Any) -> float:
    began = time.perf_counter()
    step()
    return time.perf_counter() - began


def queries(step: Any) -> int:
    """The database queries step makes (counted apart: counting them costs time)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        step()
    return len(captured)


def measure() -> dict[str, Any]:
    from sessions.placement.scheduler import SchedulerConfig, line_place, line_places

    config = SchedulerConfig(node="bench", capacity=PLACED, queue_max=2 * PLACED)
    results: dict[str, Any] = {"lines": []}
    for waiting in LINES:
        line = rows(PLACED, waiting)

        def each_page(line: list[Any] = line) -> None:
            for row in line:
                line_place(config, row)

        def once() -> None:
            line_places(config)
        results["lines"].append({
            "waiting": waiting,
            "each_s": [timed(each_page) for _ in range(REPEATS)], "each_queries": queries(each_page),
            "once_s": [timed(once) for _ in range(REPEATS)], "once_queries": queries(once),
        })
    return results


def report(results: dict[str, Any]) -> Table:
    table = Table(
        f"Telling the waiting line its places after one change (SQLite, {PLACED} placed visits, "
        f"median of {REPEATS}); reference: each page reading its own place",
        ["visitors in line", "each page reads its own (reference)", "queries", "the line read once",
         "queries", "ratio", "changes a second one core tells"],
    )
    for line in results["lines"]:
        each, once = median(line["each_s"]), median(line["once_s"])
        table.row(line["waiting"], f"{each * 1000:.1f} ms", line["each_queries"], f"{once * 1000:.1f} ms",
                  line["once_queries"], ratio(once, each), f"{1 / once:,.0f} (before: {1 / each:,.1f})")
    table.print()
    return table


def main() -> None:
    with portal_environment(exhibits=False):
        results = measure()
    write_results("line", results, tables=[report(results)])


if __name__ == "__main__":
    main()
