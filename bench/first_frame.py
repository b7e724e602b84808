"""Click to first frame: how long a visitor waits after pressing Start.

For each exhibit and accelerator: from the POST that creates a session to
(a) the first framebuffer update on the portal's WebSocket and (b) the first
frame that shows the guest's own picture (the demo's desktop; FreeDOS's first
screen after the kernel). Every figure is shown with its ratio to the reference row measured in this run.
The POST and the WebSocket go through the portal's ASGI application in this
process (Django's test client and Channels' communicator), not through Daphne.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Table, ms, p95, portal_environment, ratio, runs, verdict, write_results

RUNS = runs(10, 3)
COLD_RUNS = runs(10, 3)
GUEST_TIMEOUT_S = 30.0


@dataclass
class Sample:
    first_update_s: list[float] = field(default_factory=list)
    guest_picture_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def one_visit(broker: Any, slug: str, guest_ready: Any) -> tuple[float, float | None, str]:
    from tests.conftest import display_watch, visitor

    browser = visitor()
    started = time.perf_counter()
    response = await browser.post(f"/api/exhibits/{slug}/sessions")
    assert response.status_code == 201, response.content
    session = response.json()
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        first_update = time.perf_counter() - started
        machine = broker.machine(session["id"])
        picture: float | None = None
        failure = ""
        try:
            await rfb.until(lambda: guest_ready(machine, rfb), timeout_s=GUEST_TIMEOUT_S)
            picture = time.perf_counter() - started
        except TimeoutError:
            last_lines = (await machine.text_screen()).strip().splitlines()[-1:] or ["(blank)"]
            failure = f"no guest picture in {GUEST_TIMEOUT_S:g} s: {last_lines[0][:60]}"
        return first_update, picture, failure
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")


async def demo_ready(machine: Any, rfb: Any) -> bool:
    # The demo's teal desktop at the right edge of the 640x480 screen.
    return bool(rfb.width == 640 and rfb.pixel(630, 300)[1] > 120 and rfb.pixel(630, 300)[0] < 40)


async def freedos_ready(machine: Any, rfb: Any) -> bool:
    screen = await machine.text_screen()
    return "CONFIG.SYS error" in screen or "Score" in screen


async def games_ready(machine: Any, rfb: Any) -> bool:
    return "A:\\>" in await machine.text_screen()


# Each exhibit: how its guest picture is recognised, and how its start state is prepared.
EXHIBITS: dict[str, tuple[Any, Any]] = {
    "demo": (demo_ready, {"wait_graphics": True, "still_s": 1.0}),
    "freedos-2048": (freedos_ready, None),
    "freedos-games": (games_ready, {"wait_text": "A:\\>", "still_s": 1.0}),
}
TARGET_S = 0.300


async def reset_times(broker: Any, slug: str, runs: int) -> list[float]:
    """From the POST .../reset to the first framebuffer update on a new WebSocket."""
    from tests.conftest import display_watch, visitor

    browser = visitor()
    session = (await browser.post(f"/api/exhibits/{slug}/sessions")).json()
    times: list[float] = []
    began: float | None = None
    try:
        for _ in range(runs + 1):
            rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
            if began is not None:
                times.append(time.perf_counter() - began)
            # As the page does at the click: drop the old display, then ask for the reset.
            await rfb.close()
            began = time.perf_counter()
            response = await browser.post(f"/api/sessions/{session['id']}/reset")
            assert response.status_code == 200, response.content
    finally:
        await browser.delete(f"/api/sessions/{session['id']}")
    return times


async def measure() -> dict[str, Any]:
    from portal.models import Exhibit, StartState
    from sessions.broker import exhibit_prepare, get_broker
    from sessions.machine import kvm_usable
    from sessions.prepare import StartCondition

    accelerators = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    samples: dict[tuple[str, str, str], Sample] = {}
    resets: dict[tuple[str, str], list[float]] = {}
    broker = await get_broker()
    try:
        for accelerator in accelerators:
            preference = "auto" if accelerator == "kvm" else "tcg"
            await Exhibit.objects.all().aupdate(accelerator=preference)
            await StartState.objects.all().adelete()
            for slug, (ready, prepare) in EXHIBITS.items():
                await _sample(broker, samples, slug, accelerator, "cold", ready, COLD_RUNS)
                if prepare is None:
                    continue
                if samples[(slug, accelerator, "cold")].failures:
                    continue  # a guest that cannot boot here cannot be prepared either
                exhibit = await Exhibit.objects.select_related("image").aget(slug=slug)
                await exhibit_prepare(exhibit, StartCondition(**prepare))
                await _sample(broker, samples, slug, accelerator, "prepared", ready, RUNS)
                resets[(slug, accelerator)] = await reset_times(broker, slug, RUNS)
    finally:
        await broker.shutdown()

    reference_key = ("demo", accelerators[0], "cold")
    reference = statistics.median(samples[reference_key].first_update_s)
    table = Table(
        f"Click to first frame (POST -> first framebuffer update on the WebSocket); cold boot "
        f"{COLD_RUNS} runs, prepared {RUNS} runs; reference: demo, {accelerators[0]}, cold",
        ["exhibit", "accel", "start", "runs", "first update median", "p95", "ratio",
         "guest picture median", "p95", "ratio", "target: prepared median <= 300 ms", "notes"],
    )
    results: dict[str, Any] = {"first_frame": [], "reset": []}
    for (slug, accelerator, start), sample in samples.items():
        first = statistics.median(sample.first_update_s)
        picture = statistics.median(sample.guest_picture_s) if sample.guest_picture_s else None
        target = ""
        if start == "prepared":
            target = verdict(first <= TARGET_S and (picture or 1) <= TARGET_S)
        table.row(
            slug, accelerator, start, len(sample.first_update_s), ms(first),
            ms(p95(sample.first_update_s)), ratio(first, reference), ms(picture),
            ms(p95(sample.guest_picture_s)) if sample.guest_picture_s else "-",
            ratio(picture, reference), target, "; ".join(sample.failures),
        )
        results["first_frame"].append({
            "exhibit": slug, "accelerator": accelerator, "start": start,
            "first_update_s": sample.first_update_s, "guest_picture_s": sample.guest_picture_s,
            "failures": sample.failures,
        })
    table.print()

    reset_table = Table(
        f"Reset (POST .../reset -> first framebuffer update on a new WebSocket), {RUNS} runs; "
        "reference: the same exhibit's prepared start",
        ["exhibit", "accel", "median", "p95", "ratio", "target: <= 300 ms (as a start)"],
    )
    for (slug, accelerator), times in resets.items():
        median = statistics.median(times)
        start_median = statistics.median(samples[(slug, accelerator, "prepared")].first_update_s)
        reset_table.row(slug, accelerator, ms(median), ms(p95(times)),
                        ratio(median, start_median), verdict(median <= TARGET_S))
        results["reset"].append({"exhibit": slug, "accelerator": accelerator, "seconds": times})
    reset_table.print()
    results["tables"] = [table, reset_table]
    return results


async def _sample(broker: Any, samples: dict[tuple[str, str, str], Sample], slug: str,
                  accelerator: str, start: str, ready: Any, runs: int) -> None:
    sample = samples.setdefault((slug, accelerator, start), Sample())
    for _ in range(runs):
        first, picture, failure = await one_visit(broker, slug, ready)
        sample.first_update_s.append(first)
        if picture is None:
            sample.failures.append(failure)
            break  # a guest that cannot boot here will not boot on the next try
        sample.guest_picture_s.append(picture)


def main() -> None:
    with portal_environment(exhibits=True):
        results = asyncio.run(measure())
    tables = results.pop("tables")
    write_results("first_frame", results, tables=tables)


if __name__ == "__main__":
    main()
