"""What recording a visit costs: the portal's CPU per byte it relays, with and without
a recording of the same visit, and the recording's display bytes a minute.

One prepared demo, served by Daphne as `make run` serves it; one visit, its display
on the portal's WebSocket (the tests' RFB client, which asks for Raw pictures and
asks again after each update, as noVNC does). The desktop is in use throughout: the
pointer goes round in circles and a letter is typed into the Notepad every 0.3 s.
Windows alternate, unrecorded (the reference) and recorded (`POST
/api/sessions/<id>/recording`, stopped at the window's end), so both see the same
visit in the same run.

- CPU per byte: the portal process's (Daphne's) CPU seconds over a window, per MB
  the display socket delivered in it; target: recording adds at most 5 %. The
  recorder is a process of its own (sessions/machines/recorder.py): its CPU (and its
  ffmpeg's) is shown beside, apart.
- Display bytes a minute: the recording's file over its length (no sound: the
  demo is quiet here); target: at most 2 MB a minute.
"""
from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ratio, runs, served_portal, verdict, write_results
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

PAIRS = runs(3, 2)
WINDOW_S = float(runs(60, 5))
CPU_TICKS = 100
DESKTOP_DRAWN = 630, 300
TYPED = "the quick brown fox jumps over the lazy dog "


def cpu_s(pid: int, *, children: bool = False) -> float:
    """A process's own CPU seconds, or (children) those of its children it has waited
    for: the recorder (and its ffmpeg), once it has stopped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / CPU_TICKS


class CountingTransport:
    """The display socket, counting what it delivers."""

    def __init__(self, inner: WebSocketTransport) -> None:
        self.inner = inner
        self.received = 0

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def receive(self) -> bytes:
        data = await self.inner.receive()
        self.received += len(data)
        return data

    async def close(self) -> None:
        await self.inner.close()


async def desktop_use(rfb: RfbClient, seconds: float) -> None:
    """The pointer in circles and a letter typed every 0.3 s, for `seconds`."""
    began = time.perf_counter()
    step = 0
    while (elapsed := time.perf_counter() - began) < seconds:
        angle = elapsed * 2 * math.pi / 3
        await rfb.pointer(int(320 + 200 * math.cos(angle)), int(240 + 150 * math.sin(angle)))
        if step % 10 == 0:
            await rfb.type_text(TYPED[(step // 10) % len(TYPED)])
        step += 1
        await asyncio.sleep(0.03)


async def window(visitor: PortalVisitor, session_id: str, rfb: RfbClient, counter: CountingTransport,
                 pid: int, *, recorded: bool) -> dict[str, Any]:
    recording: dict[str, Any] = {}
    if recorded:
        status, started = await asyncio.to_thread(visitor.request, "POST",
                                                  f"/api/sessions/{session_id}/recording")
        assert status == 201, started
    cpu_before, bytes_before, began = cpu_s(pid), counter.received, time.perf_counter()
    children_before = cpu_s(pid, children=True)
    await desktop_use(rfb, WINDOW_S)
    cpu_used, relayed = cpu_s(pid) - cpu_before, counter.received - bytes_before
    elapsed = time.perf_counter() - began
    if recorded:
        status, recording = await asyncio.to_thread(visitor.request, "DELETE",
                                                    f"/api/sessions/{session_id}/recording")
        assert status == 200, recording
    recorder_cpu = cpu_s(pid, children=True) - children_before
    return {"recorded": recorded, "seconds": elapsed, "cpu_s": cpu_used, "relayed_bytes": relayed,
            "recorder_cpu_s": recorder_cpu,
            "cpu_s_per_mb": cpu_used / max(1, relayed) * 1e6,
            "recording_seconds": recording.get("seconds"), "recording_bytes": recording.get("bytes")}


async def measure(pid: int, url: str) -> dict[str, Any]:
    visitor = PortalVisitor(url)
    session = await asyncio.to_thread(visitor.session_start, "demo")
    counter = CountingTransport(await visitor.websocket(session["vnc_path"]))
    rfb = RfbClient(counter)
    await rfb.handshake()
    await rfb.first_update()
    rfb.start()
    await rfb.wait_for(lambda c: c.width == 640 and c.pixel(*DESKTOP_DRAWN)[1] > 120, timeout_s=60)
    windows = []
    for _ in range(PAIRS):
        for recorded in (False, True):
            windows.append(await window(visitor, session["id"], rfb, counter, pid, recorded=recorded))
    await rfb.close()
    assert await asyncio.to_thread(visitor.session_end, session["id"]) == 204
    return {"windows": windows}


def report(results: dict[str, Any]) -> list[Table]:
    windows = results["windows"]
    plain = [w for w in windows if not w["recorded"]]
    recorded = [w for w in windows if w["recorded"]]
    reference = median([w["cpu_s_per_mb"] for w in plain])
    with_recording = median([w["cpu_s_per_mb"] for w in recorded])
    added = with_recording / reference - 1 if reference else 0.0
    cpu = Table(f"The portal's CPU per MB relayed, the demo's desktop in use ({PAIRS} pairs of "
                f"{WINDOW_S:g} s windows; median); reference: the same visit unrecorded",
                ["windows", "MB relayed a window", "CPU s a window", "CPU s per MB", "ratio",
                 "target: recording adds ≤ 5 %", "the recorder's own process and its ffmpeg, CPU s"])
    cpu.row("unrecorded (reference)", f"{median([w['relayed_bytes'] for w in plain]) / 1e6:.1f}",
            f"{median([w['cpu_s'] for w in plain]):.2f}", f"{reference:.4f}", "1.00", "", "")
    cpu.row("recorded", f"{median([w['relayed_bytes'] for w in recorded]) / 1e6:.1f}",
            f"{median([w['cpu_s'] for w in recorded]):.2f}", f"{with_recording:.4f}",
            ratio(with_recording, reference), f"{added * 100:+.1f} % {verdict(added <= 0.05)}",
            f"{median([w['recorder_cpu_s'] for w in recorded]):.2f}")
    per_minute = median([w["recording_bytes"] / w["recording_seconds"] * 60 for w in recorded])
    size = Table("The recording's display bytes a minute, the demo's desktop in use (median of the "
                 "recorded windows)", ["recording", "bytes", "seconds", "MB a minute",
                                       "target: ≤ 2 MB a minute"])
    for number, w in enumerate(recorded, start=1):
        size.row(f"window {number}", w["recording_bytes"], f"{w['recording_seconds']:.1f}",
                 f"{w['recording_bytes'] / w['recording_seconds'] * 60 / 1e6:.2f}", "")
    size.row("median", "", "", f"{per_minute / 1e6:.2f}", verdict(per_minute <= 2e6))
    for table in (cpu, size):
        table.print()
    results["summary"] = {"cpu_added": added, "bytes_per_minute": per_minute}
    return [cpu, size]


def main() -> None:
    environment = {"PORTAL_GRACE_S": "3600", "PORTAL_IDLE_S": "3600"}
    with served_portal(environment=environment) as served:
        results = asyncio.run(measure(served.pid, served.url))
    tables = report(results)
    write_results("recording", results, tables=tables)


if __name__ == "__main__":
    main()
