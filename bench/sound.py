"""The machine's sound: how soon a visitor hears it, what it costs the network,
and what it costs the host.

One prepared demo with its AdLib, served by Daphne as `make run` serves it. The
visitor's side: the display on the portal's WebSocket (to press F5, the speaker
tune, and F6, the AdLib tune) and the sound socket. The reference: an RFB audio
client straight on the machine's own VNC socket (`sessions.display.audio`, no portal in
between), in the same process, on the same clock.

- Latency. QEMU tells its audio clients the moment the first sound device starts
  (its audio "begin" message, sent while the guest's write to the speaker's port
  is handled): from that speaker write, seen on the direct client, to the first
  sample with sound (a peak over -30 dBFS) on the direct client (the reference)
  and on the sound socket. Again while the AdLib plays zeros (it stays active
  from its first note on, the portal then reads the machine every 100 ms, and no
  "begin" marks the speaker's write): from the key press instead.
- Bytes a second: on the sound socket and on the VNC socket behind it, while each
  tune plays and on the quiet desktop, before and after the AdLib; reference: PCM
  in the socket's format.
- CPU: QEMU's and the portal's (Daphne), % of one core over windows, with a listener
  on a quiet machine as the reference: no listener, each tune played again and
  again, and the quiet machine after the AdLib (which plays zeros from then on).
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

from bench.common import Table, median, ms, p95, ratio, runs, served_portal, verdict, write_results
from sessions.display.audio import BEGIN, END, AudioConnection, audio_format_for, audio_open
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

RUNS = runs(20, 3)
WINDOW_S = float(runs(10, 3))
QUIET_S = float(runs(5, 2))
F5, F6 = 0xFFC2, 0xFFC3
# Each tune's length (demo/sound.asm) and a margin: a key is pressed again after it.
TUNE_S = {F5: 1.6, F6: 2.9}
LOUD = 1000  # a peak over -30 dBFS is sound
DESKTOP_DRAWN = 630, 300
CPU_TICKS = 100


def peak(pcm: bytes) -> int:
    samples = memoryview(pcm[: len(pcm) - len(pcm) % 2]).cast("h")
    return max(max(samples, default=0), -min(samples, default=0))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CPU_TICKS


class Listener:
    """Times and counts what arrives: on the sound socket, or on a direct VNC audio client."""

    def __init__(self) -> None:
        self.bytes = 0
        self.sound_at: list[float] = []   # arrival of each message with sound
        self.begin_at: list[float] = []
        self.end_at: list[float] = []
        self.last_at = 0.0
        self.task: asyncio.Task[None] | None = None
        self.arrived = asyncio.Event()

    def took(self, pcm: bytes) -> None:
        now = time.perf_counter()
        self.bytes += len(pcm)
        self.last_at = now
        if peak(pcm) > LOUD:
            self.sound_at.append(now)
            self.arrived.set()

    def first_sound_after(self, moment: float) -> float | None:
        return next((at for at in self.sound_at if at >= moment), None)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


class SocketListener(Listener):
    """The portal's sound socket, as the page has it."""

    async def open(self, visitor: PortalVisitor, path: str) -> dict[str, Any]:
        self.transport: WebSocketTransport = await visitor.websocket(path)
        audio_format = json.loads(await self.transport.receive_text())
        self.task = asyncio.create_task(self._run())
        return dict(audio_format)

    async def _run(self) -> None:
        while True:
            self.took(await self.transport.receive())

    async def close(self) -> None:
        await self.stop()
        await self.transport.close()


class DirectListener(Listener):
    """An RFB audio client on the machine's own VNC socket: what QEMU sends, when."""

    async def open(self, vnc_path: Path, sound: tuple[str, ...]) -> None:
        self.connection: AudioConnection = await audio_open(vnc_path, audio_format_for(sound),
                                                            timeout_s=10)
        self.wire_bytes = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        connection = self.connection
        while data := await connection.reader.read(65536):
            self.wire_bytes += len(data)
            for event in connection.stream.feed(data):
                if event == BEGIN:
                    self.begin_at.append(time.perf_counter())
                elif event == END:
                    self.end_at.append(time.perf_counter())
                else:
                    assert isinstance(event, bytes)
                    self.took(event)

    async def close(self) -> None:
        await self.stop()
        self.connection.close()


async def heard(*listeners: Listener, after: float, timeout_s: float = 5) -> None:
    """Wait until every listener has had sound since `after`."""
    async with asyncio.timeout(timeout_s):
        for listener in listeners:
            while listener.first_sound_after(after) is None:
                listener.arrived.clear()
                await listener.arrived.wait()


async def quiet(listener: Listener, seconds: float = 0.6) -> None:
    """Wait until nothing has arrived for a while (the tune's end and the socket's hold)."""
    async with asyncio.timeout(30):
        while True:
            left = seconds - (time.perf_counter() - listener.last_at)
            if left <= 0:
                return
            await asyncio.sleep(left)


async def latency_runs(rfb: RfbClient, portal: SocketListener, direct: DirectListener
                       ) -> list[dict[str, float | None]]:
    """Press F5 RUNS times; for each: when the key went, QEMU's begin, the first sound."""
    samples = []
    for _ in range(RUNS):
        await quiet(portal)
        # At any moment of the portal's 100 ms reads of a machine sending silence.
        await asyncio.sleep(random.uniform(0, 0.1))
        pressed = time.perf_counter()
        await rfb.press(F5)
        await heard(portal, direct, after=pressed)
        begin = next((at for at in direct.begin_at if at >= pressed), None)
        samples.append({"key": pressed, "begin": begin, "direct": direct.first_sound_after(pressed),
                        "socket": portal.first_sound_after(pressed)})
        await asyncio.sleep(TUNE_S[F5])
    return samples


async def tune_bytes(rfb: RfbClient, key: int, portal: SocketListener, direct: DirectListener
                     ) -> dict[str, float]:
    """One tune: the bytes on each socket and the time from its first to its last message."""
    await quiet(portal)
    socket_before, wire_before = portal.bytes, direct.wire_bytes
    pressed = time.perf_counter()
    await rfb.press(key)
    await heard(portal, after=pressed)
    first = portal.first_sound_after(pressed)
    assert first is not None
    await asyncio.sleep(TUNE_S[key])
    await quiet(portal)
    return {"socket_bytes": portal.bytes - socket_before, "wire_bytes": direct.wire_bytes - wire_before,
            "seconds": portal.last_at - first}


async def quiet_bytes(portal: SocketListener, direct: DirectListener) -> dict[str, float]:
    socket_before, wire_before = portal.bytes, direct.wire_bytes
    await asyncio.sleep(QUIET_S)
    return {"socket_bytes": portal.bytes - socket_before, "wire_bytes": direct.wire_bytes - wire_before,
            "seconds": QUIET_S}


async def cpu_window(pids: dict[str, int], rfb: RfbClient, key: int | None) -> dict[str, float]:
    """% of one core of each process over WINDOW_S, pressing key again after each tune."""
    before = {name: cpu_s(pid) for name, pid in pids.items()}
    began = time.perf_counter()
    while time.perf_counter() - began < WINDOW_S:
        if key is None:
            await asyncio.sleep(WINDOW_S)
            break
        await rfb.press(key)
        await asyncio.sleep(TUNE_S[key] + 0.2)
    elapsed = time.perf_counter() - began
    return {name: (cpu_s(pid) - before[name]) / elapsed * 100 for name, pid in pids.items()}


async def measure(served: Any) -> dict[str, Any]:
    visitor = PortalVisitor(served.url)
    session = visitor.session_start("demo")
    qemu_pid, run_dir = served.machine(session["id"])
    pids = {"qemu": qemu_pid, "portal": served.pid}
    vnc_path = run_dir / "vnc.sock"
    sound = ("pcspk", "adlib")
    rfb = await visitor.display(session["vnc_path"])
    rfb.start()
    await rfb.wait_for(lambda c: c.width == 640 and c.pixel(*DESKTOP_DRAWN)[1] > 120, timeout_s=60)
    await rfb.stop()  # the display asks for nothing more: only keys go to it from here
    results: dict[str, Any] = {"cpu_percent": {}, "bytes": {}}
    cpu = results["cpu_percent"]

    cpu["quiet, no listener"] = await cpu_window(pids, rfb, None)
    portal = SocketListener()
    results["format"] = await portal.open(visitor, session["audio_path"])
    cpu["quiet, a listener (reference)"] = await cpu_window(pids, rfb, None)

    direct = DirectListener()
    await direct.open(vnc_path, sound)
    results["bytes"]["quiet desktop"] = await quiet_bytes(portal, direct)
    results["latency_speaker"] = await latency_runs(rfb, portal, direct)
    results["bytes"]["speaker tune"] = await tune_bytes(rfb, F5, portal, direct)
    results["bytes"]["AdLib tune"] = await tune_bytes(rfb, F6, portal, direct)
    await quiet(portal)
    results["bytes"]["quiet desktop after the AdLib (zeros)"] = await quiet_bytes(portal, direct)
    results["latency_speaker_after_adlib"] = await latency_runs(rfb, portal, direct)
    await direct.close()

    cpu["quiet after the AdLib (zeros), a listener"] = await cpu_window(pids, rfb, None)
    cpu["speaker tune again and again, a listener"] = await cpu_window(pids, rfb, F5)
    cpu["AdLib tune again and again, a listener"] = await cpu_window(pids, rfb, F6)
    await portal.close()
    await asyncio.sleep(1)
    cpu["quiet after the AdLib (zeros), no listener"] = await cpu_window(pids, rfb, None)
    await rfb.close()
    assert visitor.session_end(session["id"]) == 204
    return results


def report(results: dict[str, Any]) -> list[Table]:
    tables = []
    latency = Table(
        f"Sound latency ({RUNS} presses of F5 each; median / p95); reference: a direct RFB audio "
        "client on the machine's VNC socket",
        ["case", "key → speaker write (QEMU's begin)", "from", "to the first sound, direct",
         "to the first sound, sound socket", "added by the portal (median)", "ratio (median)",
         "target: heard < 2 s"])
    for name, key, start in (("speaker, no card active", "latency_speaker", "begin"),
                             ("speaker while the AdLib plays zeros", "latency_speaker_after_adlib",
                              "key")):
        samples = results[key]
        direct = [s["direct"] - s[start] for s in samples if s[start] is not None]
        socket = [s["socket"] - s[start] for s in samples if s[start] is not None]
        begins = [s["begin"] - s["key"] for s in samples if s["begin"] is not None]
        heard = [s["socket"] - s["key"] for s in samples]
        latency.row(
            name, f"{ms(median(begins))} / {ms(p95(begins))}" if begins else "- (no begin)",
            "the speaker write" if start == "begin" else "the key press",
            f"{ms(median(direct))} / {ms(p95(direct))}", f"{ms(median(socket))} / {ms(p95(socket))}",
            ms(median(socket) - median(direct)), ratio(median(socket), median(direct)),
            verdict(max(heard) < 2.0))
    tables.append(latency)

    rate = results["format"]["rate"] * results["format"]["channels"] * 2
    volume = Table(f"Bytes a second; reference: PCM in the socket's format ({rate / 1000:.1f} kB/s)",
                   ["while", "sound socket", "ratio", "VNC socket behind it", "ratio",
                    "bytes on the sound socket", "target: ~0 while silent"])
    for name, measured in results["bytes"].items():
        seconds = max(measured["seconds"], 1e-9)
        socket_rate, wire_rate = measured["socket_bytes"] / seconds, measured["wire_bytes"] / seconds
        quiet_case = name.startswith("quiet")
        volume.row(name, f"{socket_rate / 1000:.1f} kB/s", ratio(socket_rate, rate),
                   f"{wire_rate / 1000:.1f} kB/s", ratio(wire_rate, rate),
                   f"{measured['socket_bytes']:.0f} in {measured['seconds']:.1f} s",
                   verdict(measured["socket_bytes"] < 1000) if quiet_case else "")
    tables.append(volume)

    cpu = Table(f"CPU, % of one core ({WINDOW_S:g} s windows); reference: the quiet machine with a "
                "listener", ["machine", "QEMU", "ratio", "portal (Daphne)", "ratio",
                             "target: quiet < 1 % (QEMU)"])
    reference = results["cpu_percent"]["quiet, a listener (reference)"]
    for name, values in results["cpu_percent"].items():
        cpu.row(name, f"{values['qemu']:.2f}", ratio(values["qemu"], reference["qemu"]),
                f"{values['portal']:.2f}", ratio(values["portal"], reference["portal"]),
                verdict(values["qemu"] < 1.0) if name.startswith("quiet,") else "")
    tables.append(cpu)
    for table in tables:
        table.print()
    return tables


def main() -> None:
    environment = {"PORTAL_GRACE_S": "3600"}
    with served_portal(environment=environment, demo_sound="adlib") as served:
        results = asyncio.run(measure(served))
    tables = report(results)
    write_results("sound", results, tables=tables)


if __name__ == "__main__":
    main()
