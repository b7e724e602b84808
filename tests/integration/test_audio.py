"""The sound WebSocket through Channels' WebsocketCommunicator, against the demo's real QEMU."""
from __future__ import annotations

import dataclasses
import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from portal.models import Exhibit
from portal.server import SendFlow
from sessions.models import VisitorSession
from tests.conftest import ExhibitFactory, display_watch, visitor, ws_communicator

pytestmark = pytest.mark.django_db(transaction=True)

F5, F6 = 0xFFC2, 0xFFC3


def peak(pcm: bytes) -> int:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return max((abs(sample) for sample in samples), default=0)


async def desktop_up(browser: AsyncClient, session_id: str) -> Any:
    """The demo's display, once its desktop is drawn (its main loop takes keys)."""
    rfb = await display_watch(browser, f"/ws/sessions/{session_id}/vnc")
    await rfb.wait_for(lambda c: c.width == 640 and c.pixel(630, 300)[1] > 120, timeout_s=60)
    return rfb


@pytest.fixture
async def demo_visit(broker: Any, exhibit_create: ExhibitFactory,
                     demo_image: Path) -> tuple[AsyncClient, str]:
    await exhibit_create(demo_image, slug="demo", boot="hdd")
    await Exhibit.objects.filter(slug="demo").aupdate(sound_adlib=True)
    browser = visitor()
    response = await browser.post("/api/exhibits/demo/sessions")
    assert response.status_code == 201
    session = response.json()
    assert session["audio_path"] == f"/ws/sessions/{session['id']}/audio"
    return browser, session["id"]


async def close_code(communicator: Any) -> int:
    connected, _ = await communicator.connect(timeout=30)
    assert connected, "the handshake is accepted so that the close code can be seen"
    while (message := await communicator.receive_output(timeout=30))["type"] != "websocket.close":
        pass
    return int(message["code"])


async def test_it_sends_the_format_then_the_guests_sound_and_nothing_while_silent(
    demo_visit: tuple[AsyncClient, str],
) -> None:
    browser, session_id = demo_visit
    rfb = await desktop_up(browser, session_id)
    sound = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    assert (await sound.connect(timeout=30))[0]
    first = await sound.receive_output(timeout=30)
    assert json.loads(first["text"]) == {"type": "format", "rate": 44100, "channels": 1,
                                         "sample": "s16le"}
    # The desktop is silent: nothing comes.
    assert await sound.receive_nothing(timeout=1.0)
    # The speaker, the AdLib, and the speaker again while the AdLib plays zeros
    # (it stays active from the guest's first write on, and is read less often).
    for key in (F5, F6, F5):
        pressed = time.monotonic()
        await rfb.press(key)
        loudest = 0
        while loudest <= 1000:
            message = await sound.receive_output(timeout=2.0)
            assert message["type"] == "websocket.send", message
            assert message.get("bytes"), message
            assert len(message["bytes"]) % 2 == 0
            loudest = max(loudest, peak(message["bytes"]))
        assert time.monotonic() - pressed < 2.0
        # The tune ends, and so do the messages (the AdLib stays active, playing zeros).
        deadline = time.monotonic() + 10
        while not await sound.receive_nothing(timeout=1.0):
            assert (await sound.receive_output(timeout=1))["type"] == "websocket.send"
            assert time.monotonic() < deadline, "sound went on after the tune"
    await sound.disconnect()
    await rfb.close()


async def test_it_closes_a_listener_that_sends_anything_and_lets_it_back(
    demo_visit: tuple[AsyncClient, str],
) -> None:
    browser, session_id = demo_visit
    sound = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    assert (await sound.connect(timeout=30))[0]
    assert (await sound.receive_output(timeout=30))["type"] == "websocket.send"
    await sound.send_to(bytes_data=b"\x00")
    while (message := await sound.receive_output(timeout=10))["type"] != "websocket.close":
        pass
    assert message["code"] == 4400
    again = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    assert (await again.connect(timeout=30))[0]
    assert "format" in (await again.receive_output(timeout=30))["text"]
    await again.disconnect()


async def test_it_refuses_strangers_foreign_pages_and_unknown_or_ended_visits(
    demo_visit: tuple[AsyncClient, str], broker: Any,
) -> None:
    browser, session_id = demo_visit
    path = f"/ws/sessions/{session_id}/audio"
    stranger = visitor()
    await stranger.get("/api/exhibits")
    assert await close_code(ws_communicator(stranger, path)) == 4403
    assert await close_code(ws_communicator(AsyncClient(), path)) == 4403
    assert await close_code(ws_communicator(browser, path, origin="http://evil.example")) == 4403
    assert await close_code(ws_communicator(browser, "/ws/sessions/nope/audio")) == 4404
    assert await close_code(ws_communicator(browser, f"/ws/sessions/{'a' * 32}/audio")) == 4404
    open_one = ws_communicator(browser, path)
    assert (await open_one.connect(timeout=30))[0]
    assert (await open_one.receive_output(timeout=30))["type"] == "websocket.send"
    await broker.session_end(session_id=session_id, reason="visitor")
    while (message := await open_one.receive_output(timeout=30))["type"] != "websocket.close":
        pass
    assert message["code"] == 4410
    assert await close_code(ws_communicator(browser, path)) == 4410


async def test_it_closes_with_4412_when_the_machine_is_replaced(
    demo_visit: tuple[AsyncClient, str],
) -> None:
    browser, session_id = demo_visit
    sound = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    assert (await sound.connect(timeout=30))[0]
    assert (await sound.receive_output(timeout=30))["type"] == "websocket.send"
    assert (await browser.post(f"/api/sessions/{session_id}/reset")).status_code == 200
    while (message := await sound.receive_output(timeout=30))["type"] != "websocket.close":
        pass
    assert message["code"] == 4412
    again = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    assert (await again.connect(timeout=30))[0]
    assert "format" in (await again.receive_output(timeout=30))["text"]
    await again.disconnect()


async def test_it_counts_listeners_apart_from_displays(
    demo_visit: tuple[AsyncClient, str], broker: Any,
) -> None:
    browser, session_id = demo_visit
    limit = 2
    broker.keeper.config = dataclasses.replace(broker.keeper.config, displays_per_session=limit)
    listeners = []
    for _ in range(limit):
        listener = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
        assert (await listener.connect(timeout=30))[0]
        assert (await listener.receive_output(timeout=30))["type"] == "websocket.send"
        listeners.append(listener)
    assert await close_code(ws_communicator(browser, f"/ws/sessions/{session_id}/audio")) == 4429
    # A display still opens beside them.
    rfb = await display_watch(browser, f"/ws/sessions/{session_id}/vnc")
    await rfb.close()
    for listener in listeners:
        await listener.disconnect()


async def test_it_drops_sound_a_listener_does_not_take_and_closes_it_when_stuck(
    demo_visit: tuple[AsyncClient, str], settings: Any,
) -> None:
    """A browser whose connection holds more than the server's buffer gets no more
    sound (it would only be late), and is closed with 4408 after PORTAL_VIEWER_STUCK_S."""
    settings.PORTAL_VIEWER_STUCK_S = 1.0
    browser, session_id = demo_visit
    rfb = await desktop_up(browser, session_id)
    flow = SendFlow()
    flow._pause()  # the browser has stopped reading
    sound = ws_communicator(browser, f"/ws/sessions/{session_id}/audio")
    sound.scope["extensions"] = {"portal.send_flow": flow}
    assert (await sound.connect(timeout=30))[0]
    assert "format" in (await sound.receive_output(timeout=30))["text"]
    began = time.monotonic()
    await rfb.press(F5)
    message = await sound.receive_output(timeout=10)
    # Nothing but the close: every chunk of the tune was dropped.
    assert message["type"] == "websocket.close"
    assert message["code"] == 4408
    # After a second of sound (the tune is 1.65 s), give or take QEMU's 10 ms audio period.
    assert 0.9 <= time.monotonic() - began < 5
    session = await VisitorSession.objects.aget(id=session_id)
    assert session.state == "running"
    await rfb.close()
