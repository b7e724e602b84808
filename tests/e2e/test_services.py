"""One node on the production services: PostgreSQL, Redis, and nginx in front.

Each service is started by the test from Debian's packages (deploy/services.py)
in a private directory on a free loopback port and stopped by its pid
afterwards; the node is the portal's Daphne with --proxy-headers, as the
systemd unit in deploy/ runs it. Visitors connect from addresses of their own
(127.0.0.2, 127.0.0.3: all of 127/8 is loopback), so what the node believes
about an address can only have come through nginx's X-Forwarded-For.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from deploy.services import Nginx, PostgreSQL, Redis
from tests.e2e.conftest import NginxFactory, Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.wait import eventually
from tests.support.websocket import WebSocketTransport

NodeFactory = Callable[..., Portal]


@pytest.fixture
def node_make(postgresql: PostgreSQL, redis: Redis, portal_make: PortalFactory) -> NodeFactory:
    """A served portal on the test's PostgreSQL and Redis, trusting its proxy's headers.
    (Asked for after the services, so it is stopped before them.)"""

    def make(settings: dict[str, str] | None = None, *, prepare: bool = True) -> Portal:
        return portal_make({"PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url,
                            **(settings or {})}, prepare=prepare, proxy_headers=True)

    return make


async def display_answers(rfb: RfbClient) -> None:
    """The machine's whole screen, asked for and received again."""
    async with asyncio.timeout(30):
        await rfb.request_update(incremental=False)
        await rfb.read_message()
    assert rfb.lit_pixels() > 10000, "the demo's desktop, not a black screen"


async def event_next(events: WebSocketTransport) -> dict[str, Any]:
    async with asyncio.timeout(30):
        return dict(json.loads(await events.receive_text()))


async def events_until_ended(events: WebSocketTransport) -> list[dict[str, Any]]:
    """The page's events up to the end of the visit, and then the socket's close."""
    received: list[dict[str, Any]] = []
    while not received or received[-1]["type"] != "ended":
        received.append(await event_next(events))
    async with asyncio.timeout(30):
        assert await events.closed() == 4410
    return received


def test_a_visit_runs_through_nginx_on_postgresql_and_redis(
    node_make: NodeFactory, nginx_make: NginxFactory
) -> None:
    node = node_make({"PORTAL_LIVE_PER_ADDRESS": "1", "PORTAL_MAX_SESSIONS": "3"})
    edge = nginx_make(node)
    status, health = PortalVisitor(edge.url).request("GET", "/healthz")
    assert status == 200, health
    assert health["ok"], health
    visitor = PortalVisitor(edge.url, local_address="127.0.0.2")
    session = visitor.session_start("demo")

    async def visit() -> None:
        events = await visitor.websocket(session["events_path"])
        state = await event_next(events)
        assert (state["type"], state["state"]) == ("state", "running")
        rfb = await visitor.display(session["vnc_path"])
        assert rfb.lit_pixels() > 10000, "the demo's desktop, through nginx"

        # The node counts the visitor's own address (X-Forwarded-For), not nginx's:
        # another address may start, the same one from a fresh cookie jar may not,
        # and a header the client forges does not change its address.
        other = PortalVisitor(edge.url, local_address="127.0.0.3")
        other_session = await asyncio.to_thread(other.session_start, "demo")
        again = PortalVisitor(edge.url, local_address="127.0.0.2")
        forged = PortalVisitor(edge.url, local_address="127.0.0.2")
        forged.headers["X-Forwarded-For"] = "203.0.113.9"
        for refused in (again, forged):
            status, answer = await asyncio.to_thread(refused.request, "POST", "/api/exhibits/demo/sessions")
            assert status == 429, answer
            assert answer["error"] == "address_limit", answer
        assert await asyncio.to_thread(other.session_end, other_session["id"]) == 204

        # End: the node's broker tells the page through Redis.
        assert await asyncio.to_thread(visitor.session_end, session["id"]) == 204
        received = await events_until_ended(events)
        assert received[-1]["reason"] == "visitor"
        assert any(event.get("state") == "ended" for event in received), received
        assert await rfb.transport.closed() == 4410  # type: ignore[attr-defined]

    asyncio.run(visit())
    log = (node.root / "daphne.log").read_text()
    assert "Exception inside application" not in log


def _http_exchange(edge: Nginx, head: bytes, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as connection:
        connection.sendall(head)
        with contextlib.suppress(OSError):  # refused before the body was read: the point
            connection.sendall(body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def test_nginx_refuses_an_oversized_body_in_the_apis_words(
    node_make: NodeFactory, nginx_make: NginxFactory
) -> None:
    node = node_make(prepare=False)
    edge = nginx_make(node)
    answer = _http_exchange(edge, b"POST /api/csrf HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Length: 314572800\r\nConnection: close\r\n\r\n", b"x" * 65536)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head
    assert json.loads(body)["error"] == "body_too_large"
    # nginx refused it: the node never saw the request.
    assert "refused a" not in (node.root / "daphne.log").read_text()
    # The curators' upload path takes larger bodies: this one reaches the node
    # (which wants a logged-in curator and a CSRF token, not a smaller body).
    upload = b"y" * (2 * 1024 * 1024)
    answer = _http_exchange(
        edge, b"POST /admin/portal/diskimage/upload/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/octet-stream\r\nConnection: close\r\n"
              b"Content-Length: " + str(len(upload)).encode() + b"\r\n\r\n", upload)
    status = int(answer.split(b" ", 2)[1])
    assert status in {302, 403}, answer[:300]


def test_a_visit_outlives_a_redis_and_a_postgresql_restart(
    node_make: NodeFactory, nginx_make: NginxFactory, postgresql: PostgreSQL, redis: Redis
) -> None:
    import redis as redis_client

    from sessions.node.broker import session_group

    node = node_make()
    edge = nginx_make(node)
    visitor = PortalVisitor(edge.url)
    session = visitor.session_start("demo")
    # Where the node's pages listen in Redis (channels_redis's pub/sub name for the group).
    channel = f"portal__group__{session_group(session['id'])}"

    async def subscribed() -> None:
        """Until the node's subscriber is back in Redis (it reconnects by itself)."""
        client = redis_client.asyncio.Redis(host="127.0.0.1", port=redis.port, password=redis.password)

        async def listening() -> bool:
            return dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1

        try:
            await eventually(listening, timeout_s=30)
        finally:
            await client.aclose()

    async def visit() -> None:
        events = await visitor.websocket(session["events_path"])
        assert (await event_next(events))["state"] == "running"
        rfb = await visitor.display(session["vnc_path"])
        await subscribed()

        # Redis away: the display is not in Redis at all, so it goes on, and opens.
        await asyncio.to_thread(redis.stop)
        await display_answers(rfb)
        second = await visitor.display(session["vnc_path"])
        await second.close()
        await asyncio.to_thread(redis.start)
        await subscribed()

        # PostgreSQL away: the node keeps the machine; the display goes on.
        await asyncio.to_thread(postgresql.stop)
        await display_answers(rfb)
        # A request while it is away fails in the API's words, and ends nothing.
        status, answer = await asyncio.to_thread(visitor.request, "GET", f"/api/sessions/{session['id']}")
        assert status == 500, answer
        assert answer["error"] == "server_error", answer
        await display_answers(rfb)
        await asyncio.to_thread(postgresql.start)
        # The next request after the restart works.
        status, now = await asyncio.to_thread(visitor.request, "GET", f"/api/sessions/{session['id']}")
        assert status == 200, now
        assert now["state"] == "running", now
        await display_answers(rfb)

        # Both restarted: End reaches the page through the new Redis connection.
        assert await asyncio.to_thread(visitor.session_end, session["id"]) == 204
        received = await events_until_ended(events)
        assert received[-1]["reason"] == "visitor", received

    asyncio.run(visit())
    assert "Exception inside application" not in (node.root / "daphne.log").read_text()
