"""The portal's limits as a visitor meets them, through the served portal (real
Daphne over TCP): a server stopping under live visits, a place in line given up,
a Reset that keeps the visit's time limit, the per-address start limit and the
origin check on the events socket."""
from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import pytest

from sessions.machines.machine import process_alive
from tests.e2e.conftest import Portal
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.websocket import WebSocketTransport


async def next_event(events: WebSocketTransport, *, timeout_s: float = 30) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        return dict(json.loads(await events.receive_text()))


async def event_where(events: WebSocketTransport, wanted: dict[str, Any], *,
                      timeout_s: float = 30) -> dict[str, Any]:
    """The first event on the page's socket that has all of wanted's fields."""
    async with asyncio.timeout(timeout_s):
        while True:
            event = await next_event(events, timeout_s=timeout_s)
            if all(event.get(key) == value for key, value in wanted.items()):
                return event


def test_a_stopping_server_ends_every_live_visit_as_server_and_tells_its_page(portal: Portal) -> None:
    visitors = [PortalVisitor(portal.url) for _ in range(2)]
    sessions = [visitor.session_start("demo") for visitor in visitors]
    machines = [portal.machine(session["id"]) for session in sessions]
    assert all(process_alive(pid) for pid, _ in machines)

    async def stop_while_watching() -> dict[str, Any]:
        events = await visitors[0].websocket(sessions[0]["events_path"])
        await event_where(events, {"type": "state", "state": "running"})
        await asyncio.to_thread(portal.stop)  # SIGTERM, as a service manager sends
        return await event_where(events, {"type": "ended"})

    told = asyncio.run(stop_while_watching())
    assert told["reason"] == "server"
    # Every machine went, the warm pool's too.
    assert processes_naming(portal.run_dir) == []
    assert not any(process_alive(pid) for pid, _ in machines)
    assert sorted(portal.run_dir.iterdir()) == []
    portal.serve()
    for visitor, session in zip(visitors, sessions, strict=True):
        status, after = visitor.request("GET", f"/api/sessions/{session['id']}")
        assert status == 200
        assert (after["state"], after["ended_reason"]) == ("ended", "server")


@pytest.mark.parametrize("portal_settings", [{"PORTAL_MAX_SESSIONS": "1", "PORTAL_GRACE_S": "2",
                                              "PORTAL_LIVE_PER_ADDRESS": "10"}])
def test_a_place_in_line_given_up_goes_to_the_next_in_line(portal: Portal) -> None:
    holder, leaver, next_one = (PortalVisitor(portal.url) for _ in range(3))
    running = holder.session_start("demo")

    async def visit() -> None:
        holding = await holder.websocket(running["events_path"])  # keeps the machine watched
        lines: dict[str, Any] = {}
        sockets: dict[str, WebSocketTransport] = {}
        for name, visitor in (("leaver", leaver), ("next", next_one)):
            status, lines[name] = await asyncio.to_thread(visitor.request, "POST",
                                                          "/api/exhibits/demo/sessions")
            assert status == 201
            assert lines[name]["state"] == "queued"
            sockets[name] = await visitor.websocket(lines[name]["events_path"])
        await event_where(sockets["next"], {"type": "state", "queue_position": 2})
        # The first in line closes the page and does not come back within the grace period.
        await sockets["leaver"].close()
        moved_up = await event_where(sockets["next"], {"type": "state", "queue_position": 1},
                                     timeout_s=15)
        assert moved_up["state"] == "queued"
        left = f"/api/sessions/{lines['leaver']['id']}"
        status, gone = await asyncio.to_thread(leaver.request, "GET", left)
        assert (status, gone["state"], gone["ended_reason"]) == (200, "ended", "visitor")
        # The machine frees: it goes to the one still waiting, not to the one who left.
        assert await asyncio.to_thread(holder.session_end, running["id"]) == 204
        await event_where(sockets["next"], {"type": "state", "state": "running"})
        pid, _ = portal.machine(lines["next"]["id"])
        assert process_alive(pid)
        await holding.close()
        assert await asyncio.to_thread(next_one.session_end, lines["next"]["id"]) == 204

    asyncio.run(visit())


@pytest.mark.parametrize("portal_settings", [{"PORTAL_SESSION_MAX_S": "20", "PORTAL_WARNING_S": "5"}])
def test_a_reset_keeps_the_visits_time_limit(portal: Portal) -> None:
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")
    expires = datetime.fromisoformat(session["expires_at"]).timestamp()

    async def visit() -> float:
        events = await visitor.websocket(session["events_path"])
        status, reset = await asyncio.to_thread(visitor.request, "POST",
                                                f"/api/sessions/{session['id']}/reset")
        assert status == 200
        assert reset["state"] == "running"
        assert reset["expires_at"] == session["expires_at"]
        await event_where(events, {"type": "ended", "reason": "timeout"}, timeout_s=40)
        return time.time()

    ended_at = asyncio.run(visit())
    # It ended when the first machine's time was up, not a reset's worth later.
    assert abs(ended_at - expires) < 2.5, (ended_at, expires)


@pytest.mark.parametrize("portal_settings", [{"PORTAL_STARTS_PER_ADDRESS": "2",
                                              "PORTAL_START_WINDOW_S": "600",
                                              "PORTAL_LIVE_PER_ADDRESS": "10"}])
def test_one_address_may_start_only_so_many_visits_a_window(portal: Portal) -> None:
    """New cookie jars (new browsers) from one address do not get around it."""
    for _ in range(2):
        visitor = PortalVisitor(portal.url)
        session = visitor.session_start("demo")
        assert visitor.session_end(session["id"]) == 204
    refused_browser = PortalVisitor(portal.url)
    status, refused = refused_browser.request("POST", "/api/exhibits/demo/sessions")
    assert status == 429, refused
    assert refused["error"] == "rate_limited"
    assert refused["detail"].endswith(".")
    assert "try again" in refused["detail"].lower()
    assert 0 < int(refused_browser.last_headers["Retry-After"]) <= 600
    # Another address is not limited by this one's starts.
    elsewhere = PortalVisitor(portal.url, local_address="127.0.0.2")
    session = elsewhere.session_start("demo")
    assert elsewhere.session_end(session["id"]) == 204


def test_the_events_socket_refuses_another_sites_page(portal: Portal) -> None:
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")

    async def visit() -> tuple[int | None, str, dict[str, Any]]:
        foreign = await visitor.websocket(session["events_path"], origin="https://elsewhere.example")
        async with asyncio.timeout(30):
            code = await foreign.closed()
        own = await visitor.websocket(session["events_path"])
        return code, foreign.close_reason, await next_event(own)

    code, reason, first = asyncio.run(visit())
    assert code == 4403
    assert reason
    assert first["type"] == "state"
    assert first["state"] == "running"
    assert visitor.session_end(session["id"]) == 204
