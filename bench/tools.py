"""What the visitor's tools cost: typing through the API, and the screenshot.

Typing, on the prepared FreeDOS (freedos-games, TCG): `POST …/keys` with a line of
20 and of 120 characters (DOS's command line holds 127) (mixed case and punctuation, half of it shifted) on a
`rem` line, until the answer (every key handed to QEMU) and until the whole line is
on the guest's text screen; the reference is the same line typed over the display
as a browser sends keys (RFB KeyEvents through the portal's WebSocket) until it is
on the screen. The API paces keys (`PORTAL_KEY_HOLD_MS`, `PORTAL_KEYS_INTERVAL_S`,
each key stored by the BIOS before the next) where a browser does not, so the
ratio is the price of never losing a key.

Screenshot: `GET …/screenshot.png` (QMP screendump as PNG into a file handed to
QEMU, read back, sent); the reference is the same screendump as PPM straight over
QMP (no PNG encoding, no HTTP).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, portal_environment, ratio, runs, write_results
from deploy import teardown

RUNS = runs(5, 2)
GUEST_TIMEOUT_S = 90.0
PROMPT = "A:\\>"


def line_of(length: int) -> str:
    pattern = "Hello (1+2) World: A_b-C "
    body = (pattern * (length // len(pattern) + 1))[:length - 4]
    return "rem " + body


async def measure(root: Path) -> dict[str, Any]:
    from portal.models import Exhibit
    from sessions.machines.prepare import StartCondition
    from sessions.node.broker import exhibit_prepare, get_broker
    from tests.conftest import display_watch, visitor
    from tests.support.guest import wait_for_screen, wait_for_text

    games = await Exhibit.objects.select_related("image").aget(slug="freedos-games")
    await Exhibit.objects.filter(pk=games.pk).aupdate(accelerator="tcg")
    games = await Exhibit.objects.select_related("image").aget(pk=games.pk)
    await exhibit_prepare(games, StartCondition(wait_text=PROMPT, still_s=1.0))
    broker = await get_broker()
    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos-games/sessions")).json()
    base = f"/api/sessions/{session['id']}"
    times: dict[str, list[float]] = {}
    rfb = await display_watch(browser, session["vnc_path"], timeout_s=GUEST_TIMEOUT_S)
    try:
        machine = broker.machine(session["id"])
        assert machine is not None
        await wait_for_text(machine, rfb, PROMPT, timeout_s=GUEST_TIMEOUT_S)

        def ends_with(line: str) -> Callable[[str], bool]:
            # The rows padded back to 80 columns read as one text: a line longer than
            # a row wraps, and the cursor is after the last character typed.
            return lambda screen: "".join(row.ljust(80) for row in screen.splitlines()).rstrip() \
                .endswith(line)

        async def on_screen(line: str) -> None:
            await wait_for_screen(machine, rfb, ends_with(line), timeout_s=GUEST_TIMEOUT_S,
                                  what="the typed line")

        async def cleared() -> None:
            response = await browser.post(f"{base}/keys", json.dumps({"combo": "ctrl-c"}),
                                          content_type="application/json")
            assert response.status_code == 204
            await wait_for_screen(machine, rfb, lambda screen: screen.splitlines()[-1:] == [PROMPT],
                                  timeout_s=GUEST_TIMEOUT_S, what="a fresh prompt")

        for length in (20, 120):
            line = line_of(length)
            answered, shown, reference = [], [], []
            for _ in range(RUNS):
                began = time.perf_counter()
                response = await browser.post(f"{base}/keys", json.dumps({"text": line}),
                                              content_type="application/json")
                answered.append(time.perf_counter() - began)
                assert response.status_code == 204, response.content
                await on_screen(line)
                shown.append(time.perf_counter() - began)
                await cleared()
                began = time.perf_counter()
                await rfb.type_text(line)
                await on_screen(line)
                reference.append(time.perf_counter() - began)
                await cleared()
            times[f"api_answer_{length}"] = answered
            times[f"api_screen_{length}"] = shown
            times[f"display_screen_{length}"] = reference

        shots, dumps = [], []
        for _ in range(RUNS * 2):
            began = time.perf_counter()
            response = await browser.get(f"{base}/screenshot.png")
            shots.append(time.perf_counter() - began)
            assert response.status_code == 200
            assert response.content[:4] == b"\x89PNG"
            target = machine.run_dir / "reference.ppm"
            began = time.perf_counter()
            await machine.screendump(target)
            dumps.append(time.perf_counter() - began)
            target.unlink()
        times["screenshot"], times["screendump_ppm"] = shots, dumps
    finally:
        with teardown.deferred():
            await rfb.close()
            await browser.delete(base)
            await broker.shutdown()

    typing = Table(f"Typing on the prepared FreeDOS (TCG, {RUNS} runs); reference: the same line typed "
                   "over the display as a browser does, until on screen",
                   ["line", "API: answer", "API: on screen", "characters a second", "reference",
                    "ratio to reference"])
    for length in (20, 120):
        on = median(times[f"api_screen_{length}"])
        typing.row(f"{length} characters", ms(median(times[f"api_answer_{length}"])), ms(on),
                   f"{length / on:.0f}", ms(median(times[f"display_screen_{length}"])),
                   ratio(on, median(times[f"display_screen_{length}"])))
    typing.print()
    screenshot = Table(f"Screenshot ({RUNS * 2} runs); reference: QMP screendump as PPM, no HTTP",
                       ["request", "median", "p95", "ratio"])
    screenshot.row("GET …/screenshot.png", ms(median(times["screenshot"])), ms(p95(times["screenshot"])),
                   ratio(median(times["screenshot"]), median(times["screendump_ppm"])))
    screenshot.row("screendump PPM (reference)", ms(median(times["screendump_ppm"])),
                   ms(p95(times["screendump_ppm"])), "1.00")
    screenshot.print()
    return {"times": times, "tables": [typing, screenshot]}


def main() -> None:
    with portal_environment(exhibits=True) as root:
        results = asyncio.run(measure(root))
    tables = results.pop("tables")
    write_results("tools", results, tables=tables)


if __name__ == "__main__":
    main()
