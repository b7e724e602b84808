"""Stuck readers: what a browser that stops reading its display costs the server.

The portal is served as `make run` serves it (portal.server, the demo
prepared). N visitors each open their machine's display, ask for raw
full-screen updates and pointer moves all along, and never read the socket;
the server's RSS is sampled for the window. Reference (same run): the same
demand from browsers that read everything. Each window has a server of its
own (RSS does not shrink, so a later window would reuse what an earlier one
grew). Afterwards each visitor connects again and must see its screen.

The per-viewer bound is what the portal itself may hold for one viewer:
Twisted's send buffer before it pauses the pipe (64 KiB), one display
message (up to 256 KiB) and the pipe's own read-ahead (consumers.DISPLAY_BUFFER_BYTES);
the kernel's socket buffers come on top and are the kernel's.

    python -m bench.stuck_reader [--window 30] [--viewers 1 10]
"""
from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench.common import (
    QUICK,
    ServedPortal,
    Table,
    portal_environment,
    rss_kib,
    runs,
    served_portal,
    verdict,
    write_results,
)
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

MIB = 1024 * 1024
TARGET_GROWTH_BYTES = 64 * MIB


def rss_bytes(pid: int) -> int:
    return rss_kib(pid) * 1024


def _websocket(rfb: RfbClient) -> WebSocketTransport:
    assert isinstance(rfb.transport, WebSocketTransport)
    return rfb.transport


async def _drain(rfb: RfbClient) -> None:
    """A browser that reads everything it is sent."""
    while True:
        await rfb.transport.receive()


async def window(server: ServedPortal, viewers: list[RfbClient], *, reading: bool,
                 seconds: float) -> dict[str, float]:
    """Demand from every viewer for `seconds`; the server's RSS growth over the window."""
    before = peak = rss_bytes(server.pid)
    tasks = [asyncio.create_task(rfb.demand_unread(_websocket(rfb).send_nowait)) for rfb in viewers]
    if reading:
        tasks += [asyncio.create_task(_drain(rfb)) for rfb in viewers]
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            peak = max(peak, rss_bytes(server.pid))
            await asyncio.sleep(0.25)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"before": before, "peak": peak, "growth": peak - before}


async def measure(server: ServedPortal, count: int, seconds: float, *, reading: bool) -> dict[str, Any]:
    """One window on a fresh server: count visitors demanding updates, reading them or not;
    afterwards each visitor connects again and must see its screen."""
    from tests.support.portal_http import PortalVisitor

    visitors = [PortalVisitor(server.url) for _ in range(count)]
    sessions = [await asyncio.to_thread(visitor.session_start, "demo") for visitor in visitors]
    try:
        viewers = [await visitor.display(session["vnc_path"], timeout_s=60)
                   for visitor, session in zip(visitors, sessions, strict=True)]
        measured = await window(server, viewers, reading=reading, seconds=seconds)
        for rfb in viewers:
            await _websocket(rfb).abort()
        back = 0
        for visitor, session in zip(visitors, sessions, strict=True):
            again = await visitor.display(session["vnc_path"], timeout_s=60)
            back += again.lit_pixels() > 10000
            await again.close()
    finally:
        for visitor, session in zip(visitors, sessions, strict=True):
            await asyncio.to_thread(visitor.session_end, session["id"])
    return {"viewers": count, "reading": reading, **measured, "back": back}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--window", type=float, default=runs(30, 5))
    # A quick run tries one visitor (two fresh servers instead of four).
    parser.add_argument("--viewers", type=int, nargs="+", default=[1] if QUICK else [1, 10])
    args = parser.parse_args()
    with portal_environment(exhibits=False):
        from sessions.web.consumers import DISPLAY_BUFFER_BYTES
    bound = 64 * 1024 + 256 * 1024 + DISPLAY_BUFFER_BYTES
    environment = {
        # The whole window stuck: the viewer is closed (4408) only after it.
        "PORTAL_VIEWER_STUCK_S": str(args.window + 30), "PORTAL_GRACE_S": "3600",
        "PORTAL_LIVE_PER_ADDRESS": "1000", "PORTAL_STARTS_PER_ADDRESS": "1000",
    }
    results: dict[tuple[int, bool], dict[str, Any]] = {}
    for count in args.viewers:
        # A fresh server for every window: RSS does not shrink, so a window after
        # another would reuse what the first one grew.
        for reading in (True, False):
            with served_portal(environment=environment) as server:
                results[count, reading] = asyncio.run(
                    measure(server, count, args.window, reading=reading))
    table = Table(
        f"Stuck readers: server RSS growth over {args.window:.0f} s of raw full-screen updates "
        "asked for and never read; reference: the same demand read by the browser",
        ["viewers", "growth, reading (reference)", "growth, stuck", "ratio", "stuck, per viewer",
         "portal-side bound per viewer", "came back and saw the screen", "target <= 64 MiB"],
    )
    for count in args.viewers:
        reference = results[count, True]["growth"]
        stuck = results[count, False]["growth"]
        back = results[count, False]["back"]
        table.row(count, f"{reference / MIB:.1f} MiB", f"{stuck / MIB:.1f} MiB",
                  f"{stuck / reference:.2f}" if reference > 0 else "-",
                  f"{stuck / count / MIB:.2f} MiB", f"{bound / MIB:.2f} MiB",
                  f"{back} of {count}", verdict(stuck <= TARGET_GROWTH_BYTES) if count == 1 else "")
    table.print()
    write_results("stuck_reader", {"window_s": args.window, "bound_bytes": bound,
                                   "runs": list(results.values())}, tables=(table,))


if __name__ == "__main__":
    main()
