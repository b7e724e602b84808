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
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import QUICK, Table, ms, p95, portal_environment, ratio, runs, verdict, write_results
from deploy import teardown

RUNS = runs(10, 2)
COLD_RUNS = runs(10, 2)
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


def accelerators_measured(*, kvm: bool) -> list[str]:
    """KVM (where this host has it) and TCG; a quick run tries the first alone."""
    found = ["kvm", "tcg"] if kvm else ["tcg"]
    return found[:1] if QUICK else found


async def measure() -> dict[str, Any]:
    from portal.models import Exhibit, StartState
    from sessions.machines.machine import kvm_usable
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare, get_broker

    accelerators = accelerators_measured(kvm=kvm_usable())
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
        with teardown.deferred():
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


# --- What a visitor sees, through the real server: warm pool, start state, cold ----

VISITOR_RUNS = runs(10, 2)
VISITOR_COLD_RUNS = runs(3, 1)
POOL_SIZE = 2
POOL_COST_WINDOW_S = runs(10, 3)
DEMO_SIZE = (640, 480)


def demo_picture(rfb: Any) -> bool:
    """The demo's own picture at its own size: the teal desktop at the right edge."""
    if (rfb.width, rfb.height) != DEMO_SIZE:
        return False
    red, green, _ = rfb.pixel(630, 300)
    return bool(green > 120 and red < 40)


@dataclass
class Seen:
    """One start (or reset) as the visitor's page sees it, in seconds from the click."""

    handshake_s: float
    first_update_s: float
    picture_s: float
    # The size the display announced at the handshake, and that of the first update.
    announced: tuple[int, int]
    first_size: tuple[int, int]
    # What the first update showed was not the guest's picture (QEMU's start-up surface).
    stale_first: bool


async def _watch_display(visitor: Any, vnc_path: str, began: float) -> Seen:
    """Connect the display as the page does, and time until the guest's own picture."""
    from tests.support.rfb import RfbClient

    rfb = RfbClient(await visitor.websocket(vnc_path))
    try:
        async with asyncio.timeout(GUEST_TIMEOUT_S):
            await rfb.handshake()
            handshake = time.perf_counter() - began
            announced = (rfb.width, rfb.height)
            first: float | None = None
            first_size = (0, 0)
            stale = False
            while True:
                before = rfb.updates
                await rfb.read_message()
                if rfb.updates == before:
                    continue
                now = time.perf_counter() - began
                shown = demo_picture(rfb)
                if first is None:
                    first, first_size, stale = now, (rfb.width, rfb.height), not shown
                if shown:
                    return Seen(handshake, first, now, announced, first_size, stale)
                await rfb.request_update(incremental=True)
    finally:
        await rfb.close()


async def visitor_start(url: str) -> tuple[Seen, dict[str, Any], Any]:
    """POST a start (the page's Start button) and watch its display; the session's
    id and the visitor are returned for a reset or an end."""
    from tests.support.portal_http import PortalVisitor

    visitor = PortalVisitor(url)
    visitor.request("GET", "/api/csrf")  # the page has its cookie before the click
    began = time.perf_counter()
    status, session = await asyncio.to_thread(visitor.request, "POST", "/api/exhibits/demo/sessions")
    assert status == 201, session
    return await _watch_display(visitor, session["vnc_path"], began), session, visitor


async def visitor_reset(visitor: Any, session: dict[str, Any]) -> Seen:
    """The page's Reset: POST it, then connect the display again."""
    began = time.perf_counter()
    status, answer = await asyncio.to_thread(visitor.request, "POST",
                                             f"/api/sessions/{session['id']}/reset")
    assert status == 200, answer
    return await _watch_display(visitor, session["vnc_path"], began)


def _pool_full(url: str, size: int) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
        return int(json.load(response)["pool"]["exhibits"].get("demo", 0)) >= size


async def _pool_waits(url: str, size: int, timeout_s: float = 60) -> None:
    """Until the node's pool holds `size` demo machines: each pooled start finds one,
    as a start does on a node that is not being stormed."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(_pool_full, url, size):
        if time.monotonic() > deadline:
            raise RuntimeError("the warm pool did not fill")
        await asyncio.sleep(0.1)


async def visitor_series(url: str, *, runs_count: int, pool: int, resets: bool) -> dict[str, Any]:
    starts: list[Seen] = []
    reset_seen: list[Seen] = []
    for _ in range(runs_count):
        if pool:
            await _pool_waits(url, pool)
        seen, session, visitor = await visitor_start(url)
        starts.append(seen)
        try:
            if resets:
                if pool:
                    await _pool_waits(url, pool)
                reset_seen.append(await visitor_reset(visitor, session))
        finally:
            await asyncio.to_thread(visitor.session_end, session["id"])
    return {"starts": starts, "resets": reset_seen}


async def pool_cost(portal: Any) -> dict[str, Any]:
    """CPU and memory of each pooled (paused) machine, beside a running idle visit's."""
    from bench.density import memory_kib, window

    _, session, visitor = await visitor_start(portal.url)
    try:
        await _pool_waits(portal.url, POOL_SIZE)
        pooled, running = await asyncio.to_thread(_machines_by_kind, portal, session["id"])
        cpu, _ = await window(pooled + running)
        memory = [memory_kib(pid) for pid in pooled + running]
    finally:
        await asyncio.to_thread(visitor.session_end, session["id"])
    count = len(pooled)

    def part(cpu: list[float], memory: list[dict[str, int]]) -> dict[str, list[float]]:
        return {"cpu_percent": cpu, "rss_mib": [m["rss"] / 1024 for m in memory],
                "pss_mib": [m["pss"] / 1024 for m in memory]}

    return {"pooled": part(cpu[:count], memory[:count]), "visit": part(cpu[count:], memory[count:])}


def _machines_by_kind(portal: Any, session_id: str) -> tuple[list[int], list[int]]:
    """The portal's QEMU pids: those still in the pool, and the visit's (its row says
    which machine it adopted; every machine has a run directory of its own)."""
    from tests.support.processes import processes_naming

    visit, _ = portal.machine(session_id)
    return [pid for pid in processes_naming(portal.run_dir) if pid != visit], [visit]


def visitor_measure() -> dict[str, Any]:
    """Pool, start state only and cold, each in a Daphne-served portal of its own, in
    this run; on KVM where the host has it, and on TCG."""
    from bench.common import served_portal
    from sessions.machines.machine import kvm_usable

    accelerators = accelerators_measured(kvm=kvm_usable())
    series: dict[tuple[str, str], dict[str, Any]] = {}
    costs: dict[str, dict[str, Any]] = {}
    for accelerator in accelerators:
        for start, pool, prepare, count in (("pool", POOL_SIZE, True, VISITOR_RUNS),
                                            ("state only", 0, True, VISITOR_RUNS),
                                            ("cold", 0, False, VISITOR_COLD_RUNS)):
            with served_portal(prepare=prepare, accelerator=accelerator,
                               environment={"PORTAL_POOL_SIZE": str(pool)}) as portal:
                series[(accelerator, start)] = asyncio.run(visitor_series(
                    portal.url, runs_count=count, pool=pool, resets=start != "cold"))
                if pool:
                    costs[accelerator] = asyncio.run(pool_cost(portal))
            print(f"  {accelerator}, {start}: measured", flush=True)
    return {"series": series, "costs": costs, "accelerators": accelerators}


def visitor_report(measured: dict[str, Any]) -> tuple[list[Table], dict[str, Any]]:
    series, costs = measured["series"], measured["costs"]
    table = Table(
        f"What a visitor sees, served by Daphne (the page's client: POST, then the display "
        f"WebSocket, raw RFB): click to the demo's own picture at 640x480; pool and state only "
        f"{VISITOR_RUNS} runs, cold {VISITOR_COLD_RUNS}; reference: the same accelerator's start "
        "state only",
        ["accel", "start", "runs", "handshake median", "first update median", "first update stale",
         "guest picture median", "p95", "ratio", "target: pool <= 0.5 x state only"],
    )
    results: dict[str, Any] = {"visitor": []}
    for (accelerator, start), data in series.items():
        seen: list[Seen] = data["starts"]
        reference = statistics.median(s.picture_s for s in series[(accelerator, "state only")]["starts"])
        picture = [s.picture_s for s in seen]
        median_picture = statistics.median(picture)
        table.row(accelerator, start, len(seen), ms(statistics.median(s.handshake_s for s in seen)),
                  ms(statistics.median(s.first_update_s for s in seen)),
                  f"{sum(s.stale_first for s in seen)}/{len(seen)}", ms(median_picture), ms(p95(picture)),
                  ratio(median_picture, reference),
                  verdict(median_picture <= 0.5 * reference) if start == "pool" else "")
        results["visitor"].append({"accelerator": accelerator, "start": start, "starts": seen,
                                   "resets": data["resets"]})
    reset_table = Table(
        "Reset as the page does it, served by Daphne (POST .../reset, then the display again): "
        "to the demo's own picture; reference: the same accelerator's reset without the pool",
        ["accel", "reset", "runs", "guest picture median", "p95", "ratio"],
    )
    for accelerator in measured["accelerators"]:
        reference = statistics.median(s.picture_s for s in series[(accelerator, "state only")]["resets"])
        for start, label in (("pool", "from the pool"), ("state only", "without the pool")):
            times = [s.picture_s for s in series[(accelerator, start)]["resets"]]
            reset_table.row(accelerator, label, len(times), ms(statistics.median(times)), ms(p95(times)),
                            ratio(statistics.median(times), reference))
    cost_table = Table(
        f"What the pool costs: each pooled (paused) machine beside a running idle visit's machine, "
        f"{POOL_COST_WINDOW_S} s CPU window; reference: the idle visit",
        ["accel", "machine", "count", "CPU % of a core (mean)", "RSS MiB (median)", "PSS MiB (median)",
         "ratio (PSS)"],
    )
    for accelerator, cost in costs.items():
        visit_pss = statistics.median(cost["visit"]["pss_mib"]) if cost["visit"]["pss_mib"] else None
        for kind in ("pooled", "visit"):
            part = cost[kind]
            if not part["cpu_percent"]:
                continue
            pss = statistics.median(part["pss_mib"])
            cost_table.row(accelerator, "pooled, paused" if kind == "pooled" else "visit, idle",
                           len(part["cpu_percent"]),
                           f"{sum(part['cpu_percent']) / len(part['cpu_percent']):.2f}",
                           f"{statistics.median(part['rss_mib']):.1f}", f"{pss:.1f}", ratio(pss, visit_pss))
    results["pool_cost"] = costs
    for each in (table, reset_table, cost_table):
        each.print()
    return [table, reset_table, cost_table], results


def main() -> None:
    tables: list[Table] = []
    results: dict[str, Any] = {}
    # BENCH_FIRST_FRAME=visitor measures only what a visitor sees (pool, state only, cold).
    if os.environ.get("BENCH_FIRST_FRAME", "") != "visitor":
        with portal_environment(exhibits=True):
            results = asyncio.run(measure())
        tables = results.pop("tables")
    visitor_tables, visitor_results = visitor_report(visitor_measure())
    write_results("first_frame", {**results, **visitor_results}, tables=[*tables, *visitor_tables])


if __name__ == "__main__":
    main()
