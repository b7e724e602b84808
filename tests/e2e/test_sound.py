"""The machine's sound through the served portal (portal.server under real Daphne),
to a plain WebSocket client and to the page in Chromium."""
from __future__ import annotations

import asyncio
import json
import re
import struct
import time
from typing import Any

import pytest

from tests.e2e.conftest import Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

F5, F6 = 0xFFC2, 0xFFC3
# The demo's desktop is drawn (its main loop takes keys): the teal at the right edge.
DESKTOP_DRAWN = 630, 300


def peak(pcm: bytes) -> int:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return max((abs(sample) for sample in samples), default=0)


async def desktop(visitor: PortalVisitor, session: dict[str, Any]) -> RfbClient:
    rfb = await visitor.display(session["vnc_path"])
    rfb.start()
    await rfb.wait_for(lambda c: c.width == 640 and c.pixel(*DESKTOP_DRAWN)[1] > 120, timeout_s=60)
    return rfb


async def heard_within(sound: WebSocketTransport, seconds: float) -> float:
    """Seconds until a message with sound (a peak above -30 dBFS) arrives."""
    began = time.monotonic()
    async with asyncio.timeout(seconds):
        while peak(await sound.receive()) <= 1000:
            pass
    return time.monotonic() - began


async def silent_for(sound: WebSocketTransport, seconds: float) -> list[int]:
    """The peaks of whatever arrives within seconds (nothing, while the guest is quiet)."""
    peaks: list[int] = []

    async def listen() -> None:
        while True:
            peaks.append(peak(await sound.receive()))

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(listen(), seconds)
    return peaks


def test_it_streams_the_speaker_and_the_adlib_to_the_owner_only(portal_make: PortalFactory) -> None:
    portal = portal_make(sound="adlib")
    owner, stranger = PortalVisitor(portal.url), PortalVisitor(portal.url)
    session = owner.session_start("demo")
    assert session["audio_path"] == f"/ws/sessions/{session['id']}/audio"
    stranger.request("GET", "/api/csrf")

    async def visit() -> None:
        rfb = await desktop(owner, session)
        sound = await owner.websocket(session["audio_path"])
        assert json.loads(await sound.receive_text()) == {
            "type": "format", "rate": 44100, "channels": 1, "sample": "s16le"}
        for key in (F5, F6):
            # Only silence, or nothing, before the key.
            assert all(each <= 8 for each in await silent_for(sound, 1.0))
            await rfb.press(key)
            assert await heard_within(sound, 2.0) < 2.0
            # The tune ends, and the socket falls quiet again.
            async with asyncio.timeout(10):
                while await silent_for_or_more(sound):
                    pass
        refused = await stranger.websocket(session["audio_path"])
        assert await refused.closed() == 4403
        await sound.close()
        await rfb.close()

    asyncio.run(visit())
    assert owner.session_end(session["id"]) == 204


async def silent_for_or_more(sound: WebSocketTransport) -> bool:
    """True while messages still come within half a second."""
    try:
        async with asyncio.timeout(0.5):
            await sound.receive()
        return True
    except TimeoutError:
        return False


SOUND_STATS = "() => window.portalSound && window.portalSound.stats"


def test_it_plays_the_machines_sound_in_the_page_after_a_click(portal: Portal, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    button = page.locator("#sound")
    assert button.get_attribute("data-state") == "waiting"
    # Let the desktop come up, then click it: the page may now make sound.
    page.wait_for_timeout(1000)
    canvas = page.locator("#screen canvas")
    box = canvas.bounding_box()
    assert box is not None
    canvas.click(position={"x": box["width"] * 0.9, "y": box["height"] * 0.6})
    page.wait_for_selector('#sound[data-state="on"]', timeout=10_000)
    page.wait_for_function("() => window.portalSound.format !== null", timeout=10_000)
    assert page.evaluate(SOUND_STATS)["receivedSound"] == 0
    page.evaluate("() => { window.beforeF5 = true; }")
    page.keyboard.press("F5")
    page.wait_for_function("() => window.portalSound.stats.receivedSound > 0", timeout=5_000)
    page.wait_for_function("() => window.portalSound.stats.playedSound > 0", timeout=5_000)
    # F5 went to the machine, not to the browser: the page was not reloaded.
    assert page.evaluate("() => window.beforeF5") is True
    # Muted: the socket closes, and the choice is kept for this browser.
    button.click()
    assert button.get_attribute("data-state") == "muted"
    page.wait_for_function("() => window.portalSound.socket === null")
    page.reload()
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    assert page.locator("#sound").get_attribute("data-state") == "muted"
    page.locator("#screen canvas").click()
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.portalSound.socket") is None
    page.locator("#sound").click()
    page.wait_for_selector('#sound[data-state="on"]', timeout=10_000)
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#sound[data-state="unavailable"]', timeout=30_000)
