"""websockify as a proxy tier: the portal's token plugin against a served portal."""
from __future__ import annotations

import asyncio

import pytest

from sessions.websockify_tokens import session_vnc_socket
from tests.e2e.conftest import Portal
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketRefusedError, WebSocketTransport
from tests.support.websockify_tier import websockify_running


async def first_update_through(url: str) -> RfbClient:
    transport = await WebSocketTransport.open(url, subprotocols=["binary"])
    rfb = RfbClient(transport)
    async with asyncio.timeout(30):
        await rfb.handshake()
        await rfb.first_update()
    return rfb


async def refused(url: str) -> bool:
    """websockify refuses an unresolvable token before or right after the handshake."""
    try:
        transport = await WebSocketTransport.open(url, subprotocols=["binary"])
    except (WebSocketRefusedError, ConnectionError, asyncio.IncompleteReadError):
        return True
    try:
        async with asyncio.timeout(10):
            await transport.receive()
    except ConnectionError:
        return True
    finally:
        await transport.close()
    return False


def test_it_proxies_a_running_session_and_refuses_other_tokens(portal: Portal) -> None:
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")
    with websockify_running(portal.env, portal.root / "websockify.log") as (proxy, _):
        async def visit() -> None:
            rfb = await first_update_through(f"{proxy}/?token={session['id']}")
            assert (rfb.width, rfb.height) == (640, 480)
            assert rfb.lit_pixels() > 10000, "the demo's desktop, not a black screen"
            await rfb.close()
            forged = session["id"][:-1] + ("A" if session["id"][-1] != "A" else "B")
            assert await refused(f"{proxy}/?token={forged}")
            assert await refused(f"{proxy}/?token=../../etc/passwd")
            assert await refused(f"{proxy}/")

        asyncio.run(visit())
        assert visitor.session_end(session["id"]) == 204
        assert asyncio.run(refused(f"{proxy}/?token={session['id']}")), "an ended session"


# transaction=True: the plugin closes old connections first, as a process outside any
# transaction should; on PostgreSQL that closes a test's atomic block's connection.
@pytest.mark.django_db(transaction=True)
def test_it_resolves_only_running_sessions_with_a_socket() -> None:
    assert session_vnc_socket("not an id") is None
    assert session_vnc_socket("A" * 32) is None


def test_a_raw_full_screen_update_crosses_daphne_to_a_plain_rfb_client(portal: Portal) -> None:
    """Any standard RFB client works over the portal's own WebSocket, even one that
    asks for uncompressed full-screen updates (1.2 MB, sent in 256 KiB messages)."""
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")

    async def visit() -> None:
        rfb = await visitor.display(session["vnc_path"])
        async with asyncio.timeout(30):
            await rfb.request_update(incremental=False)
            await rfb.read_message()
        assert (rfb.width, rfb.height) == (640, 480)
        assert rfb.lit_pixels() > 10000, "the demo's desktop, not a black screen"
        await rfb.close()

    asyncio.run(visit())
    assert visitor.session_end(session["id"]) == 204
