"""Click to first frame: how long a visitor waits after pressing Start.

For each exhibit and accelerator: from the POST that creates a session to
(a) the first framebuffer update on the portal's WebSocket and (b) the first
frame that shows the guest's own picture (the demo's desktop; FreeDOS's first
screen after the kernel). Every figure is shown with its ratio to the reference row measured in this run.
"""
from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.common import Table, portal_environment, write_results

RUNS = 5
GUEST_TIMEOUT_S = 40.0


@dataclass
class Sample:
    first_update_s: list[float] = field(default_factory=list)
    guest_picture_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


async def one_visit(broker: Any, slug: str, guest_ready: Any) -> tuple[float, float | None, str]:
    from tests.conftest import visitor, ws_communicator
    from tests.support.rfb import CommunicatorTransport, RfbClient

    browser = visitor()
    started = time.perf_counter()
    response = await browser.post(f"/api/exhibits/{slug}/sessions")
    assert response.status_code == 201, response.content
    session = response.json()
    communicator = ws_communicator(browser, session["vnc_path"])
    await communicator.connect(timeout=30)
    rfb = RfbClient(CommunicatorTransport(communicator))
    try:
        async with asyncio.timeout(GUEST_TIMEOUT_S):
            await rfb.handshake()
            await rfb.first_update()
        first_update = time.perf_counter() - started
        rfb.start()
        machine = broker.machine(session["id"])
        picture: float | None = None
        failure = ""
        try:
            async with asyncio.timeout(GUEST_TIMEOUT_S):
                while True:
                    # Counted before looking, so an update during the look is not missed.
                    seen = rfb.updates
                    if await guest_ready(machine, rfb):
                        break
                    await rfb.wait_for(lambda c, seen=seen: c.updates > seen, timeout_s=GUEST_TIMEOUT_S)
            picture = time.perf_counter() - started
        except TimeoutError:
            from tests.support.guest import text_screen

            last_lines = (await text_screen(machine)).strip().splitlines()[-1:] or ["(blank)"]
            failure = f"no guest picture in {GUEST_TIMEOUT_S:g} s: {last_lines[0][:60]}"
        return first_update, picture, failure
    finally:
        await rfb.stop()
        await communicator.disconnect()
        await browser.delete(f"/api/sessions/{session['id']}")


async def demo_ready(machine: Any, rfb: Any) -> bool:
    # The demo's teal desktop at the right edge of the 640x480 screen.
    return bool(rfb.width == 640 and rfb.pixel(630, 300)[1] > 120 and rfb.pixel(630, 300)[0] < 40)


async def freedos_ready(machine: Any, rfb: Any) -> bool:
    from tests.support.guest import text_screen

    screen = await text_screen(machine)
    return "CONFIG.SYS error" in screen or "Score" in screen


async def measure() -> dict[str, Any]:
    from portal.models import Exhibit
    from sessions.broker import get_broker
    from sessions.machine import kvm_usable

    accelerators = ["kvm", "tcg"] if kvm_usable() else ["tcg"]
    exhibits = {"demo": demo_ready, "freedos-2048": freedos_ready}
    samples: dict[tuple[str, str], Sample] = {}
    broker = await get_broker()
    try:
        for accelerator in accelerators:
            preference = "auto" if accelerator == "kvm" else "tcg"
            await Exhibit.objects.all().aupdate(accelerator=preference)
            for slug, ready in exhibits.items():
                sample = samples.setdefault((slug, accelerator), Sample())
                for _ in range(RUNS):
                    first, picture, failure = await one_visit(broker, slug, ready)
                    sample.first_update_s.append(first)
                    if picture is None:
                        sample.failures.append(failure)
                        break  # a guest that cannot boot here will not boot on the next try
                    sample.guest_picture_s.append(picture)
    finally:
        await broker.shutdown()

    reference = statistics.median(samples[("demo", accelerators[0])].first_update_s)
    table = Table(
        f"Click to first frame (POST -> WebSocket), {RUNS} runs each; "
        f"reference: demo on {accelerators[0]}, first update",
        ["exhibit", "accel", "first update median", "p95", "ratio", "guest picture median",
         "ratio", "notes"],
    )
    results: dict[str, Any] = {"first_frame": []}
    for (slug, accelerator), sample in samples.items():
        first = statistics.median(sample.first_update_s)
        p95 = _p95(sample.first_update_s)
        picture = statistics.median(sample.guest_picture_s) if sample.guest_picture_s else None
        table.row(
            slug, accelerator, _ms(first), _ms(p95), f"{first / reference:.2f}",
            _ms(picture) if picture else "-",
            f"{picture / reference:.2f}" if picture else "-",
            "; ".join(sample.failures) or "",
        )
        results["first_frame"].append({
            "exhibit": slug, "accelerator": accelerator, "runs": len(sample.first_update_s),
            "first_update_s": sample.first_update_s, "guest_picture_s": sample.guest_picture_s,
            "failures": sample.failures,
        })
    table.print()

    return results


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def main() -> None:
    with portal_environment(exhibits=True):
        results = asyncio.run(measure())
    write_results("first_frame", results)


if __name__ == "__main__":
    main()
