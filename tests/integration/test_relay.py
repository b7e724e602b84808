"""Where a visit's requests are served: the holder's look-up (sessions.placement.nodes) and the
relay's rules (portal.relay) around the real application, on the real database.

A request is piped only for a live visit that another live node with an address
holds, and never when another node piped it already; everything else is served
here. Piping to a holder that cannot be reached is said as the API says errors
(the whole piping, to a real holder, is in tests/e2e/test_relay.py).
"""
from __future__ import annotations

import json
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from channels.testing import HttpCommunicator, WebsocketCommunicator
from django.utils import timezone

from portal.relay import Relay
from sessions.machines.host import install_id
from sessions.models import Node, VisitorSession
from sessions.placement.nodes import node_holding_address, visit_holder_address
from tests.conftest import FREEDOS_2048, ExhibitFactory

pytestmark = pytest.mark.django_db(transaction=True)

OWN = "node-here"
SessionFactory = Callable[..., VisitorSession]


def address_refused() -> str:
    """A loopback address where nothing listens (a port just let go of)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def node_make(name: str, *, address: str = "", silent_s: float = 0) -> Node:
    beat = timezone.now() - timedelta(seconds=silent_s)
    return Node.objects.create(name=name, address=address, started_at=beat, heartbeat_at=beat)


@pytest.fixture
def session_make(exhibit_create: ExhibitFactory, portal_dirs: Path) -> SessionFactory:
    from asgiref.sync import async_to_sync

    exhibit = async_to_sync(exhibit_create)(FREEDOS_2048, slug="freedos")

    def make(*, node: str, state: str = VisitorSession.State.RUNNING) -> VisitorSession:
        # Each its own browser's (the database allows one live visit per browser).
        return VisitorSession.objects.create(exhibit=exhibit, owner=secrets.token_hex(8), node=node,
                                             state=state)

    return make


def test_it_names_the_live_node_that_holds_a_live_visit(
    session_make: SessionFactory, django_assert_num_queries: Any,
) -> None:
    node_make("there", address="10.0.0.12:8001")
    held = session_make(node="there")
    with django_assert_num_queries(1):
        assert node_holding_address(session_id=held.id, own=OWN, dead_after_s=10) == "10.0.0.12:8001"
    queued = session_make(node="there", state=VisitorSession.State.QUEUED)
    assert node_holding_address(session_id=queued.id, own=OWN, dead_after_s=10) == "10.0.0.12:8001"


def test_it_serves_here_what_no_other_live_node_holds(
    session_make: SessionFactory, django_assert_num_queries: Any,
) -> None:
    node_make(OWN, address="127.0.0.1:8001")
    node_make("there", address="10.0.0.12:8001")
    node_make("dead", address="10.0.0.13:8001", silent_s=11)
    node_make("nowhere", address="")
    cases = {
        "held here": session_make(node=OWN).id,
        "ended": session_make(node="there", state=VisitorSession.State.ENDED).id,
        "on a dead node": session_make(node="dead").id,
        "on a node without an address": session_make(node="nowhere").id,
        "on a node without a row": session_make(node="gone").id,
        "with no node": session_make(node="").id,
        "unknown": "A" * 32,
    }
    answers = {case: node_holding_address(session_id=session_id, own=OWN, dead_after_s=10)
               for case, session_id in cases.items()}
    assert answers == dict.fromkeys(cases)
    # A malformed id costs no query.
    with django_assert_num_queries(0):
        for malformed in ("nope", "../../etc", "A" * 300, ""):
            assert node_holding_address(session_id=malformed, own=OWN, dead_after_s=10) is None


async def test_the_relays_look_up_is_this_nodes(session_make: SessionFactory) -> None:
    from asgiref.sync import sync_to_async

    await sync_to_async(node_make)("there", address="10.0.0.12:8001")
    held = await sync_to_async(session_make)(node="there")
    mine = await sync_to_async(session_make)(node=install_id())
    assert await visit_holder_address(held.id) == "10.0.0.12:8001"
    assert await visit_holder_address(mine.id) is None


# --- The relay around the real application ------------------------------------------


@pytest.fixture
async def held_elsewhere(session_make: SessionFactory) -> AsyncIterator[VisitorSession]:
    """A running visit that a live node holds at an address where nothing answers."""
    from asgiref.sync import sync_to_async

    from portal.asgi import application

    await sync_to_async(node_make)("there", address=address_refused())
    yield await sync_to_async(session_make)(node="there")
    await application.close()


async def http_get(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    from portal.asgi import application

    communicator = HttpCommunicator(application, "GET", path,
                                    headers=[(b"host", b"testserver"), *(headers or [])])
    return dict(await communicator.get_response(timeout=30))


async def websocket_close(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    """The first close the visitor's socket gets (after the accept)."""
    from portal.asgi import application

    communicator = WebsocketCommunicator(application, path,
                                         headers=[(b"host", b"testserver"), *(headers or [])])
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    message = await communicator.receive_output(timeout=30)
    assert message["type"] == "websocket.close", message
    return dict(message)


async def test_a_holder_that_cannot_be_reached_is_said_as_the_api_says_errors(
    held_elsewhere: VisitorSession,
) -> None:
    for path in (f"/api/sessions/{held_elsewhere.id}", f"/api/sessions/{held_elsewhere.id}/reset",
                 f"/sessions/{held_elsewhere.id}/"):
        response = await http_get(path)
        assert response["status"] == 502, path
        assert (b"content-type", b"application/json") in response["headers"]
        body = json.loads(response["body"])
        assert body["error"] == "node_unreachable"
        assert body["detail"]
    for kind in ("vnc", "events"):
        close = await websocket_close(f"/ws/sessions/{held_elsewhere.id}/{kind}")
        assert close["code"] == 1011
        assert "cannot be reached" in close["reason"]
    # In the visitor's language (the language cookie, else Accept-Language), codes as they are.
    german = [(b"accept-language", b"de-DE,de;q=0.9")]
    body = json.loads((await http_get(f"/api/sessions/{held_elsewhere.id}", german))["body"])
    assert body == {"error": "node_unreachable", "detail": "Der Server, auf dem diese Maschine läuft, ist "
                    "nicht erreichbar. Versuchen Sie es gleich noch einmal."}
    close = await websocket_close(f"/ws/sessions/{held_elsewhere.id}/vnc",
                                  [(b"cookie", b"django_language=es")])
    assert close["code"] == 1011
    assert close["reason"] == ("No se puede contactar con el servidor que ejecuta esta máquina; vuelva a "
                               "intentarlo en un momento.")
    assert len(close["reason"].encode()) <= 123


async def test_it_never_relays_what_another_node_relayed(held_elsewhere: VisitorSession) -> None:
    """Served here instead: a stranger to the visit (no cookie) gets this node's own answers."""
    relayed = [(b"x-portal-relayed-by", b"another-node")]
    assert (await http_get(f"/api/sessions/{held_elsewhere.id}", relayed))["status"] == 404
    assert (await websocket_close(f"/ws/sessions/{held_elsewhere.id}/vnc", relayed))["code"] == 4403


async def test_other_paths_are_served_here_without_a_look_up() -> None:
    looked_up: list[str] = []

    async def holder_find(session_id: str) -> str | None:
        looked_up.append(session_id)
        return address_refused()

    async def here(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    relay = Relay(here, holder_find=holder_find, node_name=lambda: OWN)
    for path in ("/", "/healthz", "/api/exhibits/demo/sessions", "/exhibits/demo/", "/api/csrf",
                 "/static/portal/session.js", "/sessionsX/abc/"):
        response = await HttpCommunicator(relay, "GET", path).get_response(timeout=10)
        assert (response["status"], response["body"]) == (200, path.encode())
    assert looked_up == []
    # A look-up that fails (a database away) serves the request here.

    async def failing(session_id: str) -> str | None:
        raise RuntimeError("the database is away")

    relay = Relay(here, holder_find=failing, node_name=lambda: OWN)
    response = await HttpCommunicator(relay, "GET", "/api/sessions/" + "A" * 32).get_response(timeout=10)
    assert response["status"] == 200


async def test_it_pipes_a_floppys_worth_of_visitors_files_to_the_holder_whole() -> None:
    """POST …/media: a multipart body as large as the media limit reaches the holder
    byte for byte, with its own Content-Type (the boundary) and its length."""
    from aiohttp import web
    from django.conf import settings

    received: dict[str, Any] = {}

    async def media(request: web.Request) -> web.Response:
        received.update(body=await request.read(), content_type=request.headers["Content-Type"],
                        length=request.headers.get("Content-Length"))
        return web.json_response({"drive": "b", "files": []}, status=201)

    holder = web.Application(client_max_size=8 * 1024 * 1024)
    holder.router.add_post("/api/sessions/{id}/media", media)
    runner = web.AppRunner(holder)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    async def holder_find(session_id: str) -> str | None:
        return f"127.0.0.1:{port}"

    async def here(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("served here")

    relay = Relay(here, holder_find=holder_find, node_name=lambda: OWN)
    boundary = "portal-test-boundary"
    payload = secrets.token_bytes(int(settings.PORTAL_MEDIA_MAX_BYTES))
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"big.bin\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + \
        f"\r\n--{boundary}--\r\n".encode()
    try:
        communicator = HttpCommunicator(relay, "POST", "/api/sessions/AbCdEf123/media", body=body, headers=[
            (b"host", b"testserver"), (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode())])
        response = await communicator.get_response(timeout=30)
    finally:
        await relay.close()
        await runner.cleanup()
    assert response["status"] == 201
    assert received["body"] == body
    assert received["length"] == str(len(body))
    assert received["content_type"] == f"multipart/form-data; boundary={boundary}"


async def test_a_watch_link_is_piped_to_the_node_that_holds_its_visit(
    held_elsewhere: VisitorSession,
) -> None:
    """A watch link names its visit by a token: any node finds the visit, then its holder."""
    from sessions.placement.watch import watch_link_create

    token = await watch_link_create(session_id=held_elsewhere.id)
    for path in (f"/watch/{token}/", f"/watch/{token}/state", f"/api/watch/{token}/screen.txt",
                 f"/api/sessions/{held_elsewhere.id}/screen.txt"):
        response = await http_get(path)
        assert response["status"] == 502, path
        assert json.loads(response["body"])["error"] == "node_unreachable"
    close = await websocket_close(f"/ws/watch/{token}/vnc")
    assert close["code"] == 1011
    assert "cannot be reached" in close["reason"]
    # A token no visit has is this node's to refuse.
    unknown = await http_get("/watch/" + "A" * 32 + "/state")
    assert unknown["status"] == 404
    assert json.loads(unknown["body"])["error"] == "not_found"
    assert (await websocket_close("/ws/watch/" + "A" * 32 + "/vnc"))["code"] == 4404
