"""The display path: what each proxy costs between a visitor and a machine's VNC socket.

One prepared demo machine, served by the portal under Daphne as `make run`
does, is reached three ways with the same RFB client code (only the transport
differs): directly on its VNC unix socket (the reference), through websockify
running the portal's token plugin (the command line in docs/operators.md), and through the
portal's own Channels consumer (the session's cookie and the page's Origin).

Each is measured twice: against QEMU's own VNC server (what a visitor gets,
end to end) and against a stand-in RFB server (bench/rfb_standin.py) put in
QEMU's place on the same socket, which answers every request at once. QEMU
sends updates on its refresh timer (30 ms at best), so only the stand-in shows
what the proxy itself costs; the targets are judged on the stand-in rows.

- Throughput: the client asks for the whole 640x480 screen again and again
  (non-incremental FramebufferUpdateRequest, Raw encoding, 32 bits a pixel:
  1.2 MB an update) for a fixed window, and counts the bytes of the updates.
- Round trip: a non-incremental request for a 16x16 region, which QEMU answers
  at once, to the end of its update (1 KiB). This is the proxy's added latency
  in both directions; the guest's own reaction to a key is not in it.

The paths are measured in turns (direct, websockify, Channels, and again), so
that load from other work on the host spreads over all three alike.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK,
    Table,
    median,
    p95,
    ratio,
    runs,
    served_portal,
    us,
    verdict,
    write_results,
)
from deploy import teardown
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient, SocketTransport, Transport
from tests.support.websocket import WebSocketTransport
from tests.support.websockify_tier import websockify_running

TURNS = runs(3, 1)
WINDOW_S = runs(4, 1)
# Per server: QEMU answers on its refresh timer, so fewer round trips there.
ROUND_TRIPS = {"stand-in": runs(300, 50), "qemu": runs(30, 10)}
SMALL = 16
LATENCY_TARGET_S = 0.001


class Reader:
    """Reads RFB server messages off a transport while copying as little as it can."""

    def __init__(self, transport: Transport, leftover: bytes) -> None:
        self.transport = transport
        self.chunk = memoryview(leftover)
        self.bytes = 0

    async def take(self, count: int) -> bytes:
        parts = []
        while count:
            if not self.chunk:
                data = await self.transport.receive()
                self.bytes += len(data)
                self.chunk = memoryview(data)
            part = self.chunk[:count]
            self.chunk = self.chunk[len(part):]
            count -= len(part)
            parts.append(part)
        return b"".join(parts)

    async def skip(self, count: int) -> None:
        while count:
            if not self.chunk:
                data = await self.transport.receive()
                self.bytes += len(data)
                self.chunk = memoryview(data)
            step = min(count, len(self.chunk))
            self.chunk = self.chunk[step:]
            count -= step

    async def update(self) -> int:
        """Read server messages up to the end of the next framebuffer update; its pixel bytes."""
        while True:
            (kind,) = await self.take(1)
            if kind == 0:
                break
            if kind == 1:
                _, _, count = struct.unpack(">xHH", await self.take(5))
                await self.skip(6 * count)
            elif kind == 3:
                (length,) = struct.unpack(">3xI", await self.take(7))
                await self.skip(length)
            elif kind != 2:
                raise AssertionError(f"unknown RFB server message {kind}")
        (rectangles,) = struct.unpack(">xH", await self.take(3))
        pixels = 0
        for _ in range(rectangles):
            _, _, width, height, encoding = struct.unpack(">HHHHi", await self.take(12))
            if encoding == 0:
                await self.skip(width * height * 4)
                pixels += width * height * 4
        return pixels


async def connected(open_transport: Callable[[], Awaitable[Any]]) -> tuple[RfbClient, Reader]:
    transport = await open_transport()
    rfb = RfbClient(transport)
    async with asyncio.timeout(30):
        await rfb.handshake()
        await rfb.first_update()
    return rfb, Reader(transport, bytes(rfb._buffer))


async def request(rfb: RfbClient, *, width: int, height: int) -> None:
    await rfb.transport.send(struct.pack(">BBHHHH", 3, 0, 0, 0, width, height))


def process_tree_cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) of a process and its living descendants."""
    if pid is None:
        return 0.0
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                total += process_tree_cpu_s(int(child))
    except OSError:
        pass
    return total


async def throughput(open_transport: Callable[[], Awaitable[Any]], proxy_pid: int | None
                     ) -> tuple[float, float]:
    """Bytes a second of full-screen updates over one window, and the proxy's CPU
    seconds per GB moved (its handler processes are measured while they live)."""
    rfb, reader = await connected(open_transport)
    try:
        pixels = 0
        cpu_before = process_tree_cpu_s(proxy_pid)
        began = time.perf_counter()
        while time.perf_counter() - began < WINDOW_S:
            await request(rfb, width=rfb.width, height=rfb.height)
            pixels += await reader.update()
        elapsed = time.perf_counter() - began
        cpu = process_tree_cpu_s(proxy_pid) - cpu_before
        return pixels / elapsed, cpu / (pixels / 1e9) if pixels else 0.0
    finally:
        await rfb.transport.close()


async def round_trips(open_transport: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    rfb, reader = await connected(open_transport)
    try:
        times = []
        for _ in range(count):
            began = time.perf_counter()
            await request(rfb, width=SMALL, height=SMALL)
            await reader.update()
            times.append(time.perf_counter() - began)
        return times
    finally:
        await rfb.transport.close()


async def measure(paths: dict[str, Callable[[], Awaitable[Any]]], *, server: str,
                  proxy_pids: dict[str, int | None]) -> dict[str, Any]:
    rates: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    latencies: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(TURNS):
        for name, open_transport in paths.items():
            rate, cpu_per_gb = await throughput(open_transport, proxy_pids[name])
            rates[name].append(rate)
            cpu[name].append(cpu_per_gb)
            latencies[name] += await round_trips(open_transport, ROUND_TRIPS[server])
    return {"bytes_per_second": rates, "proxy_cpu_s_per_gb": cpu, "round_trip_s": latencies}


@contextlib.contextmanager
def standin_at(vnc_socket: Path) -> Iterator[None]:
    """Put the stand-in RFB server in QEMU's place on the socket, and QEMU back after."""
    aside = vnc_socket.with_name("vnc.sock.qemu")
    with teardown.Stops() as stops:
        with teardown.deferred():
            os.rename(vnc_socket, aside)
            stops.callback(os.rename, aside, vnc_socket)
            stops.callback(vnc_socket.unlink, missing_ok=True)
            process = subprocess.Popen([sys.executable, "-m", "bench.rfb_standin", str(vnc_socket)],
                                       cwd=Path(__file__).resolve().parent.parent,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
            stops.callback(teardown.process_stop, process, timeout_s=10)
        deadline = time.monotonic() + 10
        while not vnc_socket.is_socket():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the stand-in RFB server did not start")
            time.sleep(0.02)
        yield


def report(measured: dict[str, Any], *, server: str) -> list[Table]:
    rates = {name: median(values) for name, values in measured["bytes_per_second"].items()}
    cpu = {name: median(values) for name, values in measured["proxy_cpu_s_per_gb"].items()}
    trips = measured["round_trip_s"]
    trip = {name: median(values) for name, values in trips.items()}
    throughput_table = Table(
        f"Display throughput, {server}: full-screen Raw updates (640x480x4 = 1.2 MB), {WINDOW_S:g} s "
        f"windows, median of {TURNS} turns; references: the direct VNC socket, and websockify",
        ["path", "MB/s", "ratio to direct", "ratio to websockify", "proxy CPU s per GB",
         "target: Channels >= websockify"],
    )
    for name, rate in rates.items():
        target = verdict(rate >= rates["websockify"]) if name == "channels" else ""
        target = target if server == "stand-in" else "(judged on the stand-in)" if target else ""
        throughput_table.row(name, f"{rate / 1e6:.0f}", ratio(rate, rates["direct"]),
                             ratio(rate, rates["websockify"]),
                             f"{cpu[name]:.2f}" if name != "direct" else "-", target)
    latency_table = Table(
        f"Display round trip, {server}: non-incremental {SMALL}x{SMALL} update request -> its update, "
        f"{len(trips['direct'])} round trips a path; reference: the direct VNC socket",
        ["path", "median", "p95", "added over direct (median)", "ratio to direct",
         "ratio to websockify", "target: Channels adds <= 1 ms"],
    )
    for name, values in trips.items():
        added = trip[name] - trip["direct"]
        target = verdict(added <= LATENCY_TARGET_S) if name == "channels" else ""
        target = target if server == "stand-in" else "(judged on the stand-in)" if target else ""
        latency_table.row(name, us(trip[name]), us(p95(values)),
                          us(added) if name != "direct" else "-",
                          ratio(trip[name], trip["direct"]), ratio(trip[name], trip["websockify"]),
                          target)
    throughput_table.print()
    latency_table.print()
    return [throughput_table, latency_table]


def main() -> None:
    # The broker counts viewers on its own WebSocket only: without a long grace
    # period the machine would end while the direct and websockify paths use it.
    with served_portal(environment={"PORTAL_GRACE_S": "3600"}) as portal:
        visitor = PortalVisitor(portal.url)
        session = visitor.session_start("demo")
        vnc_socket = portal.machine(session["id"])[1] / "vnc.sock"
        try:
            with websockify_running(portal.env, portal.root / "websockify.log") as (proxy, proxy_pid):
                pids = {"direct": None, "websockify": proxy_pid, "channels": portal.pid}
                ws_url = portal.url.replace("http://", "ws://")
                paths: dict[str, Callable[[], Awaitable[Any]]] = {
                    "direct": lambda: SocketTransport.open(str(vnc_socket)),
                    "websockify": lambda: WebSocketTransport.open(
                        f"{proxy}/?token={session['id']}", subprotocols=["binary"]),
                    "channels": lambda: WebSocketTransport.open(
                        ws_url + session["vnc_path"], subprotocols=["binary"],
                        headers={"Cookie": visitor.cookie_header(), "Origin": portal.url}),
                }
                measured = {}
                with standin_at(vnc_socket):
                    measured["stand-in"] = asyncio.run(measure(paths, server="stand-in", proxy_pids=pids))
                measured["qemu"] = asyncio.run(measure(paths, server="qemu", proxy_pids=pids))
        finally:
            visitor.session_end(session["id"])
    tables = report(measured["stand-in"], server="stand-in") + report(measured["qemu"], server="qemu")
    write_results("display_path", {"quick": QUICK, "accelerator": session["accelerator"],
                                   "measured": measured}, tables=tables)


if __name__ == "__main__":
    main()
