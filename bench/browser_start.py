"""Click to picture in the visitor's browser: Start (and Reset) as Chromium shows them.

Debian's Chromium (as the tests drive it, through Playwright) on a Daphne-served
portal with the prepared demo. For each start: from the click on Start to the
display socket's creation, to the first framebuffer update on it (the first server
message after the RFB handshake), and to the desktop drawn (the canvas's sampled
pixels equal to the prepared screen's, as read from a finished start in the same
run). Rows: the page's start in place (today's page) and the start by navigation
(the page before: POST, then a load of the machine's page, emulated in the page);
with a warm HTTP cache (one browser context for all runs) and a cold one (a new
context each run: its exhibit page loaded, with what it fetches, then Start); on a
desktop window, a phone's viewport and the embed page; from the warm pool and
without it (a portal of each). Beside them, the raw client's figure for the same
start in the same run (bench/first_frame.py's: POST, then the display WebSocket,
raw RFB), and the same for Reset (click on Reset to the drawn desktop).
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bench.common import QUICK, Table, ms, p95, ratio, runs, served_portal, verdict, write_results
from bench.first_frame import _pool_waits, visitor_reset, visitor_start

RUNS = runs(10, 2)
COLD_RUNS = runs(5, 1)
RAW_RUNS = runs(10, 2)
POOL_SIZE = 2
TIMEOUT_MS = 30_000
# One browser starts many machines in a minute here, and one address many more.
UNLIMITED = {"PORTAL_STARTS_PER_BROWSER": "1000", "PORTAL_STARTS_PER_ADDRESS": "1000"}
TARGET_WARM_S = 0.150
TARGET_COLD_S = 0.400
DESKTOP = {"viewport": {"width": 1024, "height": 768}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
         "device_scale_factor": 3}
# Where the drawn desktop is sampled: a grid over the still part of the demo's 640x480
# screen (its icons and desktop), away from what changes by itself: the clocks (the
# Clock window from x 400, the corner clock at the bottom right) and Notepad's caret
# (from y 260).
GRID = [(x, y) for x in range(8, 390, 32) for y in range(8, 250, 30)]

# In every page before its own scripts: the display socket's times, read from its
# messages (RFB 3.8 with no security: version, security types, result, ServerInit,
# then the server's messages), and the moment the canvas equals the reference.
WATCH = """
(reference) => {
  const now = () => performance.timeOrigin + performance.now();
  const marks = window.portalBench = { socket: null, firstFrame: null, drawn: null };
  window.portalBenchArm = () => { marks.socket = null; marks.firstFrame = null; marks.drawn = null; };
  const grid = %(grid)s;
  function drawn() {
    const canvas = document.querySelector("#screen canvas");
    if (!canvas || canvas.width !== 640 || canvas.height !== 480) return false;
    const data = canvas.getContext("2d").getImageData(0, 0, 640, 480).data;
    if (!reference) {
      const at = (300 * 640 + 630) * 4;  // the demo's teal desktop at the right edge
      return data[at + 1] > 120 && data[at] < 40;
    }
    return grid.every(([x, y], i) => {
      const at = (y * 640 + x) * 4;
      const [r, g, b] = reference[i];
      return data[at] === r && data[at + 1] === g && data[at + 2] === b;
    });
  }
  function check() {
    if (marks.firstFrame !== null && marks.drawn === null && drawn()) marks.drawn = now();
  }
  (function frame() { check(); requestAnimationFrame(frame); })();
  const Native = window.WebSocket;
  function Watched(url, protocols) {
    const socket = new Native(url, protocols);
    if (!String(url).endsWith("/vnc")) return socket;
    if (marks.socket === null) marks.socket = now();
    // Stages: 0 version, 1 count of security types, 2 the types, 3 result, 4 ServerInit,
    // 5 the desktop's name, 6 the server's messages.
    let stage = 0, need = 12, have = [];
    const arrived = () => {
      if (marks.firstFrame === null) marks.firstFrame = now();
      setTimeout(check, 0);
    };
    socket.addEventListener("message", (event) => {
      if (typeof event.data === "string") return;
      if (stage === 6) { arrived(); return; }
      have = have.concat(Array.from(new Uint8Array(event.data)));
      while (stage < 6 && have.length >= need) {
        const part = have.splice(0, need);
        if (stage === 0) { stage = 1; need = 1; }
        else if (stage === 1) { stage = 2; need = part[0]; }
        else if (stage === 2) { stage = 3; need = 4; }
        else if (stage === 3) { stage = 4; need = 24; }
        else if (stage === 4) {
          stage = 5;
          need = ((part[20] << 24) | (part[21] << 16) | (part[22] << 8) | part[23]) >>> 0;
        }
        else { stage = 6; }
      }
      if (stage === 6 && have.length) arrived();
    });
    return socket;
  }
  Watched.prototype = Native.prototype;
  Object.assign(Watched, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
  window.WebSocket = Watched;
}
""".replace("%(grid)s", json.dumps(GRID))

CLICK_START = """() => {
  sessionStorage.setItem("portalBenchClick", String(performance.timeOrigin + performance.now()));
  document.getElementById("start").click();
}"""
# The page before: the start's POST, then the machine's page loaded by navigation.
NAVIGATE_START = """async (embed) => {
  sessionStorage.setItem("portalBenchClick", String(performance.timeOrigin + performance.now()));
  const token = (document.cookie.match(/(?:^|;\\s*)csrftoken=([^;]+)/) || [])[1] || "";
  const slug = document.querySelector("article.exhibit").dataset.slug;
  const response = await fetch(`/api/exhibits/${slug}/sessions`, {
    method: "POST", credentials: "same-origin", headers: { "X-CSRFToken": decodeURIComponent(token) } });
  const data = await response.json();
  window.location.assign(data.page_url + (embed ? "?embed=1" : ""));
}"""
CLICK_RESET = """() => {
  window.portalBenchArm();
  sessionStorage.setItem("portalBenchClick", String(performance.timeOrigin + performance.now()));
  document.getElementById("reset").click();
}"""
TIMES = """() => {
  const click = Number(sessionStorage.getItem("portalBenchClick"));
  const m = window.portalBench;
  const since = (at) => (at - click) / 1000;
  return { socket: since(m.socket), first: since(m.firstFrame), drawn: since(m.drawn) };
}"""
END = """async () => {
  const id = window.location.pathname.split("/")[2];
  const token = (document.cookie.match(/(?:^|;\\s*)csrftoken=([^;]+)/) || [])[1] || "";
  await fetch(`/api/sessions/${id}`, { method: "DELETE", credentials: "same-origin",
    headers: { "X-CSRFToken": decodeURIComponent(token) } });
}"""


def _off_loop(make: Callable[[], Awaitable[Any]]) -> Any:
    """An asyncio step run in a thread of its own (Playwright's sync API holds this one's loop)."""
    async def run() -> Any:
        return await make()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, run()).result()


@dataclass
class Row:
    """The times of one kind of start, in seconds from the click."""

    socket: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    drawn: list[float] = field(default_factory=list)

    def add(self, times: dict[str, float]) -> None:
        self.socket.append(times["socket"])
        self.first.append(times["first"])
        self.drawn.append(times["drawn"])


def _drawn(page: Any) -> dict[str, float]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("() => window.portalBench && window.portalBench.drawn !== null",
                               timeout=TIMEOUT_MS)
    except PlaywrightTimeout:
        marks = page.evaluate("() => JSON.stringify(window.portalBench)")
        raise RuntimeError(f"{page.url}: the desktop was not drawn in {TIMEOUT_MS} ms ({marks})") from None
    times: dict[str, float] = page.evaluate(TIMES)
    return times


class Browser:
    """One Chromium for a served portal's rows; the reference screen read once."""

    def __init__(self, playwright: Any, url: str, pool: int) -> None:
        from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS

        self.url, self.pool = url, pool
        self.chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        self.reference: list[list[int]] | None = None

    def context(self, options: dict[str, Any]) -> Any:
        context = self.chromium.new_context(**options)
        context.add_init_script(script=f"({WATCH})({json.dumps(self.reference)})")
        return context

    def reference_read(self) -> None:
        """The prepared screen, as a finished start draws it (a warm-up start)."""
        context = self.context(DESKTOP)
        page = context.new_page()
        self.start(page, "/exhibits/demo/", in_place=True)
        page.wait_for_timeout(1000)  # settled: what the machine shows once it is still
        self.reference = page.evaluate(
            "(grid) => { const d = document.querySelector('#screen canvas').getContext('2d')"
            ".getImageData(0, 0, 640, 480).data;"
            " return grid.map(([x, y]) => Array.from(d.slice((y * 640 + x) * 4, (y * 640 + x) * 4 + 3))); }",
            GRID)
        page.evaluate(END)
        context.close()

    def start(self, page: Any, path: str, *, in_place: bool) -> dict[str, float]:
        if self.pool:
            _off_loop(lambda: _pool_waits(self.url, self.pool))
        page.goto(self.url + path, wait_until="networkidle")
        if in_place:
            page.evaluate(CLICK_START)
        else:
            page.evaluate(NAVIGATE_START, path.endswith("/embed"))
        return _drawn(page)

    def reset(self, page: Any) -> dict[str, float]:
        if self.pool:
            _off_loop(lambda: _pool_waits(self.url, self.pool))
        # The machine page's scripts run once its first picture is drawn: Reset is
        # pressed once they have (the page says the machine is running).
        page.wait_for_selector('#state[data-state="running"]', timeout=TIMEOUT_MS)
        page.evaluate(CLICK_RESET)
        return _drawn(page)

    def warm(self, options: dict[str, Any], path: str, *, in_place: bool, count: int,
             resets: Row | None = None) -> Row:
        """Runs in one context: the first (warming its cache) is not counted."""
        row = Row()
        context = self.context(options)
        page = context.new_page()
        for index in range(count + 1):
            times = self.start(page, path, in_place=in_place)
            if index:
                row.add(times)
                if resets is not None:
                    resets.add(self.reset(page))
            page.evaluate(END)
        context.close()
        return row

    def cold(self, options: dict[str, Any], path: str, *, in_place: bool, count: int) -> Row:
        row = Row()
        for _ in range(count):
            context = self.context(options)
            page = context.new_page()
            row.add(self.start(page, path, in_place=in_place))
            page.evaluate(END)
            context.close()
        return row


async def raw_series(url: str, pool: int, count: int) -> dict[str, list[float]]:
    """bench/first_frame.py's raw client on the same portal: the start and the reset."""
    found: dict[str, list[float]] = {"first": [], "picture": [], "reset": []}
    for _ in range(count):
        if pool:
            await _pool_waits(url, pool)
        seen, session, visitor = await visitor_start(url)
        found["first"].append(seen.first_update_s)
        found["picture"].append(seen.picture_s)
        try:
            if pool:
                await _pool_waits(url, pool)
            found["reset"].append((await visitor_reset(visitor, session)).picture_s)
        finally:
            await asyncio.to_thread(visitor.session_end, session["id"])
    return found


def measure() -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    rows: dict[tuple[str, str, str, str, str], Row] = {}
    raw: dict[str, dict[str, list[float]]] = {}
    resets: dict[tuple[str, str], Row] = {}
    # Quick (CI): the pool alone, warm and cold, in place and by navigation.
    starts = (("pool", POOL_SIZE),) if QUICK else (("pool", POOL_SIZE), ("no pool", 0))
    with sync_playwright() as playwright:
        for start, pool in starts:
            with served_portal(environment={"PORTAL_POOL_SIZE": str(pool), **UNLIMITED}) as portal:
                raw[start] = _off_loop(partial(raw_series, portal.url, pool, RAW_RUNS))
                browser = Browser(playwright, portal.url, pool)
                try:
                    browser.reference_read()
                    for in_place, how in ((True, "in place"), (False, "navigation")):
                        reset_row = resets.setdefault((start, how), Row())
                        rows[(start, "desktop", "exhibit", "warm", how)] = browser.warm(
                            DESKTOP, "/exhibits/demo/", in_place=in_place, count=RUNS, resets=reset_row)
                        rows[(start, "desktop", "exhibit", "cold", how)] = browser.cold(
                            DESKTOP, "/exhibits/demo/", in_place=in_place, count=COLD_RUNS)
                        if QUICK:
                            continue
                        rows[(start, "phone", "exhibit", "warm", how)] = browser.warm(
                            PHONE, "/exhibits/demo/", in_place=in_place, count=RUNS)
                        rows[(start, "desktop", "embed", "warm", how)] = browser.warm(
                            DESKTOP, "/exhibits/demo/embed", in_place=in_place, count=RUNS)
                finally:
                    browser.chromium.close()
            print(f"  {start}: measured", flush=True)
    return {"rows": rows, "raw": raw, "resets": resets}


def report(measured: dict[str, Any]) -> tuple[list[Table], dict[str, Any]]:
    rows: dict[tuple[str, ...], Row] = measured["rows"]
    raw: dict[str, dict[str, list[float]]] = measured["raw"]
    table = Table(
        f"Click on Start to the drawn desktop in Chromium (the demo, served by Daphne): warm cache "
        f"{RUNS} runs, cold {COLD_RUNS}; 'navigation' is the page before (POST, then the machine's "
        "page loaded); reference: the raw client's start on the same portal in this run "
        f"({RAW_RUNS} runs)",
        ["start", "viewport", "page", "cache", "how", "runs", "socket median", "first frame median",
         "drawn median", "p95", "raw client picture", "ratio to raw", "ratio to navigation",
         "target: pool, in place: warm <= 150 ms, cold <= 400 ms"],
    )
    results: dict[str, Any] = {"starts": [], "resets": [], "raw": raw}
    for key, row in rows.items():
        start, viewport, page, cache, how = key
        reference = statistics.median(raw[start]["picture"])
        drawn = statistics.median(row.drawn)
        before = rows.get((start, viewport, page, cache, "navigation"))
        target = ""
        if start == "pool" and how == "in place" and viewport == "desktop" and page == "exhibit":
            target = verdict(drawn <= (TARGET_WARM_S if cache == "warm" else TARGET_COLD_S))
        table.row(start, viewport, page, cache, how, len(row.drawn), ms(statistics.median(row.socket)),
                  ms(statistics.median(row.first)), ms(drawn), ms(p95(row.drawn)), ms(reference),
                  ratio(drawn, reference),
                  ratio(drawn, statistics.median(before.drawn)) if before and how != "navigation" else "",
                  target)
        results["starts"].append({"start": start, "viewport": viewport, "page": page, "cache": cache,
                                  "how": how, "socket_s": row.socket, "first_frame_s": row.first,
                                  "drawn_s": row.drawn})
    reset_table = Table(
        "Click on Reset to the drawn desktop in Chromium (desktop, warm cache), on the machine's "
        "page reached in place and by navigation; reference: the raw client's reset on the same portal",
        ["start", "page reached", "runs", "first frame median", "drawn median", "p95",
         "raw client reset", "ratio to raw"],
    )
    for (start, how), row in measured["resets"].items():
        reference = statistics.median(raw[start]["reset"])
        drawn = statistics.median(row.drawn)
        reset_table.row(start, how, len(row.drawn), ms(statistics.median(row.first)), ms(drawn),
                        ms(p95(row.drawn)), ms(reference), ratio(drawn, reference))
        results["resets"].append({"start": start, "how": how, "first_frame_s": row.first,
                                  "drawn_s": row.drawn})
    for each in (table, reset_table):
        each.print()
    return [table, reset_table], results


def main() -> None:
    began = time.monotonic()
    tables, results = report(measure())
    results["seconds"] = time.monotonic() - began
    write_results("browser_start", results, tables=tables)


if __name__ == "__main__":
    main()
