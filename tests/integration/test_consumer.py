"""The display WebSocket through Channels' WebsocketCommunicator, against a live VNC socket."""
from __future__ import annotations

from typing import Any

import pytest
from django.test import AsyncClient

from sessions.models import VisitorSession
from tests.conftest import FREEDOS_2048, ExhibitFactory, visitor, ws_communicator
from tests.support.rfb import CommunicatorTransport, RfbClient

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def owned(broker: Any, exhibit_create: ExhibitFactory) -> tuple[AsyncClient, str]:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    browser = visitor()
    response = await browser.post("/api/exhibits/freedos/sessions")
    assert response.status_code == 201
    return browser, response.json()["id"]


async def close_code(communicator: Any) -> int:
    connected, _ = await communicator.connect(timeout=30)
    assert connected, "the handshake is accepted so that the close code can be seen"
    message = await communicator.receive_output(timeout=30)
    assert message["type"] == "websocket.close", message
    return int(message["code"])


async def test_it_pipes_rfb_between_the_owner_and_the_machine(
    owned: tuple[AsyncClient, str],
) -> None:
    browser, session_id = owned
    communicator = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    connected, subprotocol = await communicator.connect(timeout=30)
    assert connected
    assert subprotocol == "binary"
    rfb = RfbClient(CommunicatorTransport(communicator))
    await rfb.handshake()
    assert rfb.width > 0
    assert rfb.height > 0
    await rfb.first_update()
    assert rfb.lit_pixels() > 0, "the machine's screen, not an empty framebuffer"
    await communicator.disconnect()


async def test_it_refuses_a_foreign_origin_with_4403(owned: tuple[AsyncClient, str]) -> None:
    browser, session_id = owned
    communicator = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc",
                                   origin="http://evil.example")
    assert await close_code(communicator) == 4403


async def test_it_refuses_another_browser_with_4403(owned: tuple[AsyncClient, str]) -> None:
    _, session_id = owned
    stranger = visitor()
    await stranger.get("/api/exhibits")
    assert await close_code(ws_communicator(stranger, f"/ws/sessions/{session_id}/vnc")) == 4403
    # A browser with no cookie at all is no better.
    assert await close_code(ws_communicator(AsyncClient(), f"/ws/sessions/{session_id}/vnc")) == 4403


@pytest.mark.parametrize("path_id", ["nope", "a" * 32, "..%2F..%2Fetc", "A" * 300])
async def test_it_answers_unknown_or_malformed_ids_with_4404(
    owned: tuple[AsyncClient, str], path_id: str
) -> None:
    browser, _ = owned
    assert await close_code(ws_communicator(browser, f"/ws/sessions/{path_id}/vnc")) == 4404


async def test_it_answers_an_ended_session_with_4410(
    owned: tuple[AsyncClient, str], broker: Any
) -> None:
    browser, session_id = owned
    await browser.delete(f"/api/sessions/{session_id}")
    assert await close_code(ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")) == 4410


async def test_it_closes_with_4410_when_the_session_ends_while_watching(
    owned: tuple[AsyncClient, str], broker: Any
) -> None:
    browser, session_id = owned
    communicator = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    assert (await communicator.connect(timeout=30))[0]
    rfb = RfbClient(CommunicatorTransport(communicator))
    await rfb.handshake()
    await rfb.first_update()
    await broker.session_end(session_id=session_id, reason="visitor")
    transport = rfb.transport
    assert isinstance(transport, CommunicatorTransport)
    with pytest.raises(ConnectionError):
        await rfb.read_until_closed()
    assert transport.close_code == 4410


async def test_it_closes_on_a_text_message_and_the_machine_keeps_running(
    owned: tuple[AsyncClient, str], broker: Any
) -> None:
    browser, session_id = owned
    communicator = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    assert (await communicator.connect(timeout=30))[0]
    assert (await communicator.receive_output(timeout=30))["type"] == "websocket.send"
    await communicator.send_to(text_data='{"not": "rfb"}')
    while (message := await communicator.receive_output(timeout=10))["type"] != "websocket.close":
        pass
    assert message["code"] == 4400
    session = await VisitorSession.objects.aget(id=session_id)
    assert session.state == "running"
    # The visitor reconnects to the same machine.
    again = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    assert (await again.connect(timeout=30))[0]
    rfb = RfbClient(CommunicatorTransport(again))
    await rfb.handshake()
    await again.disconnect()


async def test_it_keeps_the_machine_for_a_reconnect_within_the_grace_period(
    owned: tuple[AsyncClient, str], broker: Any
) -> None:
    browser, session_id = owned
    first = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    assert (await first.connect(timeout=30))[0]
    await RfbClient(CommunicatorTransport(first)).handshake()
    pid = (await VisitorSession.objects.aget(id=session_id)).pid
    assert pid is not None
    await first.disconnect()
    second = ws_communicator(browser, f"/ws/sessions/{session_id}/vnc")
    assert (await second.connect(timeout=30))[0]
    rfb = RfbClient(CommunicatorTransport(second))
    await rfb.handshake()
    session = await VisitorSession.objects.aget(id=session_id)
    assert session.state == "running"
    assert session.pid == pid
    await second.disconnect()
