"""What the screen as text costs: one read, and nothing while nobody reads.

On the prepared FreeDOS (freedos-games, TCG) at its prompt: a read of the text
screen over QEMU's monitor (`Machine.screen_cells`: the BIOS data area and the
active page's cells, both asked at once, and decoded), its median against the
target of 5 ms; and `GET …/screen.txt` through the portal, with the display's
size asked of QEMU's VNC server (the answer's whole path in the server, no network).

Then a guest that rewrites its screen as fast as it can (a batch file looping
over DIR): the reads of guest memory counted while nobody listens (target: none),
while five pages listen over their events sockets (target: at most one a
`PORTAL_SCREEN_TEXT_INTERVAL_MS`, however many listen), and once they have gone
(none again).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, portal_environment, runs, us, verdict, write_results
from deploy import teardown

RUNS = runs(200, 30)
GUEST_TIMEOUT_S = 90.0
PROMPT = "A:\\>"
WATCH_S = runs(5, 2)
LISTENERS = 5
TARGET_S = 0.005


async def measure(root: Path) -> dict[str, Any]:
    from portal.models import Exhibit
    from sessions.machines.prepare import StartCondition
    from sessions.machines.screen import screen_from
    from sessions.node.broker import exhibit_prepare, get_broker
    from tests.conftest import display_watch, visitor
    from tests.support.guest import wait_for_text

    games = await Exhibit.objects.select_related("image").aget(slug="freedos-games")
    await Exhibit.objects.filter(pk=games.pk).aupdate(accelerator="tcg")
    games = await Exhibit.objects.select_related("image").aget(pk=games.pk)
    await exhibit_prepare(games, StartCondition(wait_text=PROMPT, still_s=1.0))
    broker = await get_broker()
    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos-games/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    interval_s = broker.config.screen_text_interval_s
    times: dict[str, list[float]] = {"read": [], "http": [], "query_status": []}
    counts: dict[str, int] = {}
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        machine = broker.machine(session["id"])
        assert machine is not None
        await wait_for_text(machine, rfb, PROMPT, timeout_s=GUEST_TIMEOUT_S)
        for _ in range(RUNS):
            began = time.perf_counter()
            video, cells = await machine.screen_cells()
            screen = screen_from(video, cells, code_page=437, display=None)
            times["read"].append(time.perf_counter() - began)
            assert PROMPT in screen.plain()
            # The reference, taken in turn with the reads so both see the same host.
            began = time.perf_counter()
            await machine.execute("query-status")
            times["query_status"].append(time.perf_counter() - began)
        for _ in range(max(5, RUNS // 10)):
            await asyncio.sleep(interval_s)  # past the last read's interval: a read of its own
            began = time.perf_counter()
            response = await browser.get(f"{base}/screen.txt")
            times["http"].append(time.perf_counter() - began)
            assert response.status_code == 200, response.content

        # A guest that rewrites its screen without pause.
        loop = "echo :A> L.BAT\necho dir>> L.BAT\necho goto A>> L.BAT\nL\n"
        response = await browser.post(f"{base}/keys", json.dumps({"text": loop}),
                                      content_type="application/json")
        assert response.status_code == 204, response.content
        await asyncio.sleep(1.0)
        before = broker.screens.reads
        await asyncio.sleep(WATCH_S)
        counts["reads_nobody_listening"] = broker.screens.reads - before

        told = [0] * LISTENERS

        def listener(number: int) -> Any:
            async def tell(message: dict[str, Any]) -> None:
                assert message["type"] == "screen_text"
                told[number] += 1
            return tell

        stops = [broker.screens.listen(session_id=session["id"], listener=listener(number))
                 for number in range(LISTENERS)]
        before = broker.screens.reads
        began = time.perf_counter()
        await asyncio.sleep(WATCH_S)
        counts["reads_listening"] = broker.screens.reads - before
        counts["listening_s_x1000"] = round((time.perf_counter() - began) * 1000)
        counts["messages_per_listener_min"] = min(told)
        for stop in stops:
            stop()
        await asyncio.sleep(interval_s * 2)
        before = broker.screens.reads
        await asyncio.sleep(WATCH_S)
        counts["reads_after_listeners_left"] = broker.screens.reads - before
    finally:
        with teardown.deferred():
            await rfb.close()
            await browser.delete(base)
            await broker.shutdown()

    reads = Table(f"A read of the text screen on FreeDOS (TCG, {RUNS} runs); target: median ≤ 5 ms; "
                  "reference: the bare QMP round trip (query-status), taken in turn with the reads",
                  ["read", "median", "p95", "target"])
    reads.row("Machine.screen_cells + decode (monitor round trip)", us(median(times["read"])),
              us(p95(times["read"])), verdict(median(times["read"]) <= TARGET_S))
    reads.row("QMP query-status (reference)", us(median(times["query_status"])),
              us(p95(times["query_status"])), "")
    reads.row("GET …/screen.txt (Django's test client, with the display's size)",
              ms(median(times["http"])), ms(p95(times["http"])), "")
    reads.print()
    allowed = int(WATCH_S / interval_s) + 2
    cost = Table(f"Reads of guest memory while the guest rewrites its screen ({WATCH_S} s each; "
                 f"interval {interval_s * 1000:.0f} ms)", ["who listens", "reads", "target"])
    cost.row("nobody", str(counts["reads_nobody_listening"]), verdict(counts["reads_nobody_listening"] == 0))
    cost.row(f"{LISTENERS} listeners", f"{counts['reads_listening']} "
             f"({counts['messages_per_listener_min']} messages each at least)",
             verdict(counts["reads_listening"] <= allowed))
    cost.row("after they left", str(counts["reads_after_listeners_left"]),
             verdict(counts["reads_after_listeners_left"] == 0))
    cost.print()
    return {"times": times, "counts": counts, "tables": [reads, cost]}


def main() -> None:
    with portal_environment(exhibits=True) as root:
        results = asyncio.run(measure(root))
    tables = results.pop("tables")
    write_results("screen_text", results, tables=tables)


if __name__ == "__main__":
    main()
