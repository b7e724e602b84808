"""Period-correct speed on real QEMU: a guest measures its own loop at 486DX-33 speed.

The speed guest (tests/guests/speed.asm) runs the calibration loop and prints
its rate against its own timer (the PIT): within 15 % of a real 486DX-33's rate;
and its timer keeps real time (its tick count against the wall clock, within 15 %),
so the loop runs at that rate by the wall clock too.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest

from portal.models import Exhibit, StartState
from sessions.machines.prepare import StartCondition
from sessions.node.broker import exhibit_prepare
from tests.conftest import ExhibitFactory, display_watch, visitor
from tests.support.guest import wait_for_screen
from tests.support.speed import TARGETS, pace, results, speed_guest_build

pytestmark = pytest.mark.django_db(transaction=True)


async def speed_exhibit(exhibit_create: ExhibitFactory, directory: Path, speed: str) -> Any:
    exhibit = await exhibit_create(speed_guest_build(directory), slug="speed", boot="floppy")
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(speed=speed)
    return await Exhibit.objects.select_related("image").aget(pk=exhibit.pk)


async def measured(broker: Any, session_id: str, rfb: Any, *, count: int) -> list[tuple[int, int]]:
    machine = broker.machine(session_id)
    screen = await wait_for_screen(machine, rfb, lambda text: len(results(text)) >= count,
                                   timeout_s=30 + 10 * count, what=f"{count} measurements")
    return results(screen)


def within(rate: float, target: float, share: float = 0.15) -> bool:
    return abs(rate - target) <= share * target


async def test_it_runs_a_tight_loop_at_the_rate_of_a_486dx33(
    broker: Any, exhibit_create: ExhibitFactory, tmp_path: Path
) -> None:
    await speed_exhibit(exhibit_create, tmp_path, "486dx33")
    api = (await visitor().get("/api/exhibits/speed")).json()
    assert api["machine"]["speed"] == "486dx33"
    assert api["machine"]["accelerator"] == "tcg"
    assert "Runs at the speed of a 486DX-33" in (await visitor().get("/exhibits/speed/")).content.decode()
    browser = visitor()
    session = (await browser.post("/api/exhibits/speed/sessions")).json()
    rfb = await display_watch(browser, session["vnc_path"])
    try:
        assert "Runs at the speed of a 486DX-33" in (await browser.get(session["page_url"])).content.decode()
        rates = await measured(broker, session["id"], rfb, count=1)
        target = TARGETS["486dx33"]
        own = statistics.median(rate for _, rate in rates)
        assert within(own, target), f"{own} iterations/s against its own timer; target {target:.0f}"
        # Its own timer keeps real time, so the loop runs at that rate by the wall clock too.
        keeps = await pace(broker.machine(session["id"]), window_s=5)
        assert within(keeps, 1.0), f"the guest's clock ran {keeps:.3f} s a second"
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")


async def test_it_resumes_and_restores_at_the_speed_it_was_saved_at_and_never_another(
    broker: Any, exhibit_create: ExhibitFactory, tmp_path: Path
) -> None:
    exhibit = await speed_exhibit(exhibit_create, tmp_path, "486dx33")
    await exhibit_prepare(exhibit, StartCondition(wait_text="PIT=", still_s=0.5, after_s=None))
    assert (await visitor().get("/api/exhibits/speed")).json()["instant_start"] is True
    browser = visitor()
    session = (await browser.post("/api/exhibits/speed/sessions")).json()
    rfb = await display_watch(browser, session["vnc_path"])
    try:
        # Resumed: the first screen already has the measurement made while preparing.
        assert "PIT=" in await broker.machine(session["id"]).text_screen()
        checkpoints = f"/api/sessions/{session['id']}/checkpoints"
        saved = await browser.post(checkpoints)
        assert saved.status_code == 201
        restored = await browser.post(f"{checkpoints}/{saved.json()['id']}/restore")
        assert restored.status_code == 200
        rates = await measured(broker, session["id"], rfb, count=3)
        own = statistics.median(rate for _, rate in rates)
        assert within(own, TARGETS["486dx33"]), own
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")
    # A state saved at one speed is not resumed at another: it is stale, and visitors boot cold.
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(speed="486dx2-66")
    assert (await visitor().get("/api/exhibits/speed")).json()["instant_start"] is False
    start = await StartState.objects.aget(exhibit=exhibit)
    assert start.stale
    assert "speed=486dx33" in start.stale_reason
