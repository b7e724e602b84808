"""Hostile and clumsy clients against the served portal (portal.server under real Daphne).

What autobahn and Twisted do below the application (buffering whatever it is
given, rules on close codes, dropping oversized messages) is invisible to
Channels' in-process communicator, so every test here goes over TCP.
"""
from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psutil
import pytest

from tests.e2e.conftest import Portal
from tests.support.portal_http import PortalVisitor
from tests.support.websocket import WebSocketTransport

T = TypeVar("T")
MIB = 1024 * 1024
# The demo's desktop is on noVNC's canvas (not a black or empty one).
SCREEN_LIT = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return false;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) if (data[i] | data[i + 1] | data[i + 2]) lit++;
  return lit > 10000;
}"""


def rss_bytes(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def log_says(portal: Portal, text: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return text in (portal.root / "daphne.log").read_text(errors="replace")
    return check


async def close_code_of(transport: WebSocketTransport) -> tuple[int | None, str]:
    async with asyncio.timeout(30):
        code = await transport.closed()
    return code, transport.close_reason


async def when_free(opening: Callable[[], Awaitable[T]]) -> T:
    """Open as soon as the server has let go of a display just closed (4429 until then:
    a socket is the server's until it has seen it go, a moment after the client)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await opening()
        except ConnectionError as error:
            if "code 4429" not in str(error) or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("portal_settings", [{"PORTAL_VIEWER_STUCK_S": "30"}])
def test_it_bounds_what_a_browser_that_stops_reading_costs_and_lets_it_back(portal: Portal) -> None:
    """The owner asks for thousands of raw full-screen updates and never reads them:
    the server holds a few MiB for it, closes it with 4408, and the owner comes back."""
    visitor, neighbour = PortalVisitor(portal.url), PortalVisitor(portal.url)
    session = visitor.session_start("demo")
    other = neighbour.session_start("demo")
    assert portal.process is not None
    pid = portal.process.pid

    async def visit() -> None:
        watching = await neighbour.display(other["vnc_path"])
        rfb = await visitor.display(session["vnc_path"])
        before = rss_bytes(pid)
        transport = rfb.transport
        assert isinstance(transport, WebSocketTransport)
        asking = asyncio.create_task(rfb.demand_unread(transport.send_nowait))
        began, peak = time.monotonic(), before
        closed = log_says(portal, "read nothing for 30 s")
        try:
            while not await closed():
                peak = max(peak, rss_bytes(pid))
                assert time.monotonic() - began < 60, "the stuck viewer was never closed"
                await asyncio.sleep(0.25)  # a sampling interval, not a wait for a condition
        finally:
            asking.cancel()
        stuck_s = time.monotonic() - began
        assert stuck_s >= 25
        assert peak - before <= 64 * MIB, f"the server grew {(peak - before) / MIB:.0f} MiB"
        # Another visitor's display answered all along.
        async with asyncio.timeout(10):
            await watching.request_update(incremental=False)
            await watching.read_message()
        assert watching.lit_pixels() > 10000
        await watching.close()
        # The stuck browser reads again: what waited for it, then the reason it was closed.
        code, reason = await close_code_of(transport)
        assert code == 4408, reason
        assert "keep up" in reason
        again = await visitor.display(session["vnc_path"])
        assert again.lit_pixels() > 10000, "the demo's desktop, not a black screen"
        await again.close()

    asyncio.run(visit())
    assert visitor.session_end(session["id"]) == 204
    assert neighbour.session_end(other["id"]) == 204
    assert "Exception inside application" not in (portal.root / "daphne.log").read_text()


@pytest.mark.parametrize("portal_settings", [{"PORTAL_DISPLAYS_PER_SESSION": "2"}])
def test_it_closes_with_the_apis_codes_and_a_sentence(portal: Portal) -> None:
    owner, stranger = PortalVisitor(portal.url), PortalVisitor(portal.url)
    session = owner.session_start("demo")
    stranger.request("GET", "/api/csrf")
    path = session["vnc_path"]

    async def visit() -> None:
        codes: dict[str, tuple[int | None, str]] = {}

        text = await owner.websocket(path)
        await text.send_text("hello")
        codes["text"] = await close_code_of(text)

        big = await owner.websocket(path)
        await big.send(b"\x00" * (100 * 1024))
        codes["big"] = await close_code_of(big)

        huge = await owner.websocket(path)
        await huge.send(b"\x00" * (2 * MIB))  # over autobahn's own limit too
        codes["huge"] = await close_code_of(huge)

        codes["stranger"] = await close_code_of(await stranger.websocket(path))
        codes["origin"] = await close_code_of(
            await owner.websocket(path, origin="https://elsewhere.example"))
        forged = path.replace(session["id"], session["id"][:-1] + ("A" if session["id"][-1] != "A" else "B"))
        codes["forged"] = await close_code_of(await owner.websocket(forged))
        codes["nowhere"] = await close_code_of(await owner.websocket("/ws/nowhere"))

        first = await when_free(lambda: owner.display(path))
        second = await when_free(lambda: owner.display(path))
        codes["third"] = await close_code_of(await owner.websocket(path))
        await second.close()

        async def greeting_only() -> WebSocketTransport:
            transport = await owner.websocket(path)
            await transport.receive()
            return transport

        # A client that read only the greeting learns of a reset at once.
        greeted = await when_free(greeting_only)
        status, _ = await asyncio.to_thread(owner.request, "POST", f"/api/sessions/{session['id']}/reset")
        assert status == 200
        codes["reset"] = await close_code_of(greeted)
        assert isinstance(first.transport, WebSocketTransport)
        codes["reset, watching"] = await close_code_of(first.transport)

        assert await asyncio.to_thread(owner.session_end, session["id"]) == 204
        codes["ended"] = await close_code_of(await owner.websocket(path))

        assert {name: code for name, (code, _) in codes.items()} == {
            "text": 4400, "big": 4413, "huge": 4413, "stranger": 4403, "origin": 4403,
            "forged": 4404, "nowhere": 4404, "third": 4429, "reset": 4412,
            "reset, watching": 4412, "ended": 4410,
        }
        assert "binary" in codes["text"][1]
        assert "102400 bytes" in codes["big"][1]
        assert "open in 2 places" in codes["third"][1] or "shown in 2 places" in codes["third"][1]
        assert all(reason for _, reason in codes.values()), codes

    asyncio.run(visit())
    assert "Exception inside application" not in (portal.root / "daphne.log").read_text()


@pytest.mark.parametrize("portal_settings", [{"PORTAL_MAX_SESSIONS": "1", "PORTAL_LIVE_PER_ADDRESS": "10"}])
def test_a_queued_visits_display_says_wait(portal: Portal) -> None:
    first, second = PortalVisitor(portal.url), PortalVisitor(portal.url)
    running = first.session_start("demo")
    status, queued = second.request("POST", "/api/exhibits/demo/sessions")
    assert status == 201
    assert queued["state"] == "queued"

    async def visit() -> tuple[int | None, str]:
        return await close_code_of(await second.websocket(queued["vnc_path"]))

    code, reason = asyncio.run(visit())
    assert code == 4409
    assert "waiting" in reason
    assert second.session_end(queued["id"]) == 204
    assert first.session_end(running["id"]) == 204


def _http_exchange(portal: Portal, head: bytes, body_chunks: int = 0) -> bytes:
    with socket.create_connection(("127.0.0.1", portal.port), timeout=30) as connection:
        connection.sendall(head)
        try:
            for _ in range(body_chunks):
                connection.sendall(b"10000\r\n" + b"y" * 0x10000 + b"\r\n")
        except OSError:
            pass  # the server hung up: it stopped reading, which is the point
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
        return answer


def test_it_refuses_a_large_body_before_reading_it(portal: Portal) -> None:
    assert portal.process is not None
    before = rss_bytes(portal.process.pid)
    declared = _http_exchange(
        portal, b"POST /no/such/page HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                b"Content-Length: 314572800\r\n\r\n" + b"x" * 65536)
    assert declared.startswith(b"HTTP/1.1 413"), declared[:100]
    assert b"100 Continue" not in declared
    assert b'"body_too_large"' in declared
    assert b"1048576 bytes" in declared
    chunked = _http_exchange(
        portal, b"POST /api/csrf HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        body_chunks=64)
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:100]
    assert rss_bytes(portal.process.pid) - before < 32 * MIB
    # An ordinary request still works.
    visitor = PortalVisitor(portal.url)
    assert visitor.request("GET", "/api/exhibits/demo")[0] == 200


@pytest.mark.parametrize("portal_settings", [{"PORTAL_MAX_SESSIONS": "1",
                                              "PORTAL_LIVE_PER_ADDRESS": "2"}])
def test_one_address_holds_at_most_its_share_of_visits(portal: Portal) -> None:
    """Fresh cookie jars do not get around it: the limit is the network address's."""
    browsers = [PortalVisitor(portal.url) for _ in range(3)]
    running = browsers[0].session_start("demo")
    status, queued = browsers[1].request("POST", "/api/exhibits/demo/sessions")
    assert status == 201
    assert queued["state"] == "queued"
    status, refused = browsers[2].request("POST", "/api/exhibits/demo/sessions")
    assert status == 429
    assert refused["error"] == "address_limit"
    assert "2 machines" in refused["detail"]
    assert browsers[1].session_end(queued["id"]) == 204
    status, third = browsers[2].request("POST", "/api/exhibits/demo/sessions")
    assert status == 201, third
    for browser, visit in ((browsers[2], third), (browsers[0], running)):
        assert browser.session_end(visit["id"]) == 204



@pytest.mark.parametrize("portal_settings", [{"PORTAL_DISPLAYS_PER_SESSION": "1"}])
def test_the_page_explains_a_display_limit_and_follows_a_reset_in_another_tab(
    portal: Portal, browser: Any
) -> None:
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    first = context.new_page()
    first.goto(portal.url + "/exhibits/demo/")
    first.get_by_role("button", name="Start").click()
    first.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    first.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    first.wait_for_function(SCREEN_LIT, timeout=30_000)

    # The same visitor opens the machine in a second tab: one display is the limit here.
    second = context.new_page()
    second.goto(first.url)
    second.get_by_text("already open in too many tabs or windows").wait_for(timeout=30_000)
    assert second.get_by_role("button", name="Reconnect").is_visible()

    # The first tab is closed; the second takes over at the visitor's word.
    first.close()
    second.get_by_role("button", name="Reconnect").click()
    second.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    second.wait_for_function(SCREEN_LIT, timeout=30_000)

    # A reset made elsewhere (another tab, a script) replaces the machine; the
    # page connects to the new one at once, with no notice.
    with second.expect_websocket(lambda socket: socket.url.endswith("/vnc"), timeout=30_000):
        status = second.evaluate(
            """async (id) => {
                 const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
                 const r = await fetch(`/api/sessions/${id}/reset`, {method: "POST",
                   headers: {"X-CSRFToken": token}});
                 return r.status; }""",
            second.url.rstrip("/").rsplit("/", 1)[1],
        )
        assert status == 200
    second.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    second.wait_for_function(SCREEN_LIT, timeout=30_000)
    assert second.locator("#notice").is_hidden()
    second.get_by_role("button", name="End").click()
    second.get_by_text("This machine has ended.").wait_for(timeout=30_000)
    context.close()
