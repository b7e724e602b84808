"""The visitor's tools through the served portal (real Daphne): watch links whose
sockets the server keeps read-only, capped and revocable, which keep no machine
alive and are never input; and the page's Paste, Screenshot and Watch together
in Chromium, with the watch link opened in a second browser.

The demo's Notepad is the oracle at the guest: what reaches the machine's
keyboard is drawn there, and a Backspace takes back exactly one character.
"""
from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import struct
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Portal, PortalFactory
from tests.e2e.test_relay import nodes_start
from tests.e2e.test_visit import CANVAS_STATS, NOTEPAD_TEXT, WHOLE
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import KEYSYM_BACKSPACE, RfbClient
from tests.support.wait import wait_until
from tests.support.websocket import WebSocketTransport

# Notepad's text area in the demo's 640x480 screen (x0, y0, x1, y1).
NOTEPAD = tuple(NOTEPAD_TEXT)


def region(rfb: RfbClient, box: tuple[int, ...] = NOTEPAD) -> bytes:
    x0, y0, x1, y1 = box
    return b"".join(bytes(rfb.framebuffer[(y * rfb.width + x0) * 4:(y * rfb.width + x1) * 4])
                    for y in range(y0, min(y1, rfb.height)))


async def close_code_of(transport: WebSocketTransport) -> tuple[int | None, str]:
    async with asyncio.timeout(30):
        code = await transport.closed()
    return code, transport.close_reason


async def ended_with(rfb: RfbClient) -> int | None:
    """The close code of a display whose reader runs in the background."""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(30):
            await rfb.wait_closed()
    assert isinstance(rfb.transport, WebSocketTransport)
    return rfb.transport.close_code


async def watcher(portal: Portal, vnc_path: str) -> RfbClient:
    """Somebody with the link and nothing else: no cookie of the owner's."""
    return await PortalVisitor(portal.url).display(vnc_path)


@pytest.mark.parametrize("portal_settings", [{"PORTAL_WATCHERS_PER_SESSION": "2"}])
def test_watchers_see_the_machine_but_never_reach_it_and_go_when_revoked(portal: Portal) -> None:
    owner = PortalVisitor(portal.url)
    session = owner.session_start("demo")
    stranger = PortalVisitor(portal.url)
    stranger.request("GET", "/api/csrf")
    watchers_path = f"/api/sessions/{session['id']}/watchers"
    assert stranger.request("POST", watchers_path)[0] == 404
    status, link = owner.request("POST", watchers_path)
    assert status == 201
    assert link["watch_url"] == f"/watch/{link['token']}/"
    vnc = f"/ws/watch/{link['token']}/vnc"

    async def visit() -> None:
        mine = await owner.display(session["vnc_path"])
        mine.start()
        seeing = await watcher(portal, vnc)
        seeing.start()
        assert (seeing.width, seeing.height) == (640, 480)
        assert seeing.lit_pixels() > 10000, "the demo's desktop, not a black screen"
        assert (await asyncio.to_thread(owner.request, "GET", watchers_path))[1]["watchers"] == 1

        # The watcher is sent what the owner's typing draws.
        before = region(mine)
        await mine.type_text("a")
        await mine.wait_for(lambda rfb: region(rfb) != before, timeout_s=15)
        typed = region(mine)
        await seeing.wait_for(lambda rfb: region(rfb) == typed, timeout_s=15)

        # A watcher's key closes its socket (4400, with a sentence) and never reaches the
        # machine: the owner's Backspace then takes the screen back to exactly before.
        keyed = await watcher(portal, vnc)
        await keyed.type_text("x")
        code, reason = await close_code_of(keyed.transport)  # type: ignore[arg-type]
        assert code == 4400
        assert "watch link" in reason
        pointing = await watcher(portal, vnc)
        await pointing.pointer(256, 102, buttons=1)
        assert (await close_code_of(pointing.transport))[0] == 4400  # type: ignore[arg-type]
        await mine.press(KEYSYM_BACKSPACE)
        await mine.wait_for(lambda rfb: region(rfb) == before, timeout_s=15)
        await seeing.wait_for(lambda rfb: region(rfb) == before, timeout_s=15)

        # At most two watchers at once (the setting): the next is told so.
        second = await watcher(portal, vnc)
        third = await PortalVisitor(portal.url).websocket(vnc)
        code, reason = await close_code_of(third)
        assert code == 4429
        assert "watching" in reason

        # Revoke: every watcher goes with 4401, the link opens nothing, the owner stays.
        assert (await asyncio.to_thread(owner.request, "DELETE", watchers_path))[0] == 204
        second.start()
        for gone in (seeing, second):
            assert await ended_with(gone) == 4401
        late = await PortalVisitor(portal.url).websocket(vnc)
        assert (await close_code_of(late))[0] == 4404
        page = await asyncio.to_thread(PortalVisitor(portal.url).request, "GET", link["watch_url"])
        assert page[0] == 404
        await mine.type_text("b")
        await mine.wait_for(lambda rfb: region(rfb) != before, timeout_s=15)
        await mine.close()

    asyncio.run(visit())
    assert owner.session_end(session["id"]) == 204
    assert "Exception inside application" not in (portal.root / "daphne.log").read_text()


@pytest.mark.parametrize("portal_settings", [{"PORTAL_GRACE_S": "4", "PORTAL_IDLE_S": "8",
                                              "PORTAL_WARNING_S": "1"}])
def test_watchers_keep_no_machine_alive_and_are_never_input(portal: Portal) -> None:
    left, stayed = PortalVisitor(portal.url), PortalVisitor(portal.url)
    gone = left.session_start("demo")

    async def visit() -> None:
        # The owner leaves; the watcher stays, asking for pictures all along.
        page = await left.display(gone["vnc_path"])
        _, link = await asyncio.to_thread(left.request, "POST", f"/api/sessions/{gone['id']}/watchers")
        watching = await watcher(portal, f"/ws/watch/{link['token']}/vnc")
        watching.start()
        await page.close()
        # The grace period runs out with the watcher still there: the visit ends.
        assert await ended_with(watching) == 4410
        _, row = await asyncio.to_thread(left.request, "GET", f"/api/sessions/{gone['id']}")
        assert row["state"] == "ended"
        assert row["ended_reason"] == "visitor"
        # The watch page of an ended visit says so.
        status, state = await asyncio.to_thread(PortalVisitor(portal.url).request, "GET",
                                                f"/watch/{link['token']}/state")
        assert status == 200
        assert state["state"] == "ended"

        # The owner stays but does nothing; a watcher asks for pictures and tries a key:
        # none of it is input, and the idle limit ends the visit.
        idle = await asyncio.to_thread(stayed.session_start, "demo")
        mine = await stayed.display(idle["vnc_path"])
        mine.start()
        _, link = await asyncio.to_thread(stayed.request, "POST", f"/api/sessions/{idle['id']}/watchers")
        busy = await watcher(portal, f"/ws/watch/{link['token']}/vnc")
        busy.start()
        trying = await watcher(portal, f"/ws/watch/{link['token']}/vnc")
        await trying.type_text("x")
        assert (await close_code_of(trying.transport))[0] == 4400  # type: ignore[arg-type]
        assert await ended_with(busy) == 4410
        _, row = await asyncio.to_thread(stayed.request, "GET", f"/api/sessions/{idle['id']}")
        assert row["state"] == "ended"
        assert row["ended_reason"] == "idle"
        await mine.close()

    asyncio.run(visit())


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_page_pastes_takes_a_screenshot_and_shares_a_watch_link(portal: Portal, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
    page = context.new_page()
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_function(f"() => {{ const s = ({CANVAS_STATS})({WHOLE}); return s && s.lit > 10000; }}",
                           timeout=30_000)

    # Paste from the clipboard: the server types it, and Notepad draws it.
    before = page.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]
    page.evaluate("() => navigator.clipboard.writeText('Hello (1+2)')")
    page.get_by_role("button", name="Paste").click()
    page.wait_for_selector("#paste-status:has-text('Typed 11 characters.')", state="attached",
                           timeout=15_000)
    page.wait_for_function(f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
                           arg=before, timeout=15_000)
    pasted = page.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]

    # Where the clipboard gives nothing, a text box takes the text instead.
    page.evaluate("() => navigator.clipboard.writeText('')")
    page.get_by_role("button", name="Paste").click()
    box = page.locator("#paste-text")
    box.wait_for(state="visible")
    box.fill(" museum")
    page.get_by_role("button", name="Type it").click()
    page.wait_for_selector("#paste-status:has-text('Typed 7 characters.')", timeout=15_000)
    page.wait_for_function(f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
                           arg=pasted, timeout=15_000)
    page.get_by_role("button", name="Close").click()

    # Screenshot: the guest's own picture, named after the exhibit and the time.
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Screenshot").click()
    download = downloading.value
    assert re.fullmatch(r"demo-\d{4}-\d\d-\d\d-\d{4}\.png", download.suggested_filename)
    assert png_size(Path(download.path())) == (640, 480)

    # Watch together: the link opens the machine in another browser, read-only.
    page.get_by_role("button", name="Watch together").click()
    page.wait_for_function("() => document.getElementById('watch-url').value.includes('/watch/')")
    url = page.locator("#watch-url").input_value()
    other = browser.new_context(viewport={"width": 1000, "height": 700})
    watching = other.new_page()
    watching.goto(url)
    watching.wait_for_function(
        f"() => {{ const s = ({CANVAS_STATS})({WHOLE}); return s && s.lit > 10000; }}", timeout=30_000)
    watching.wait_for_selector("#watchers:has-text('1 watching')", timeout=15_000)
    page.wait_for_selector("#watchers-line:has-text('1 person is watching.')", timeout=15_000)
    assert page.locator("#watcher-count").inner_text() == "1"

    # The owner's typing shows on the watcher's screen too.
    seen = watching.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]
    page.locator("#screen canvas").click(position={"x": 5, "y": 5})
    page.keyboard.type("!")
    watching.wait_for_function(f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
                               arg=seen, timeout=15_000)

    # Hand-over: the owner gives the watcher the keyboard and mouse, and the
    # watcher's typing reaches the machine; then the owner takes them back.
    page.get_by_role("button", name="Give keyboard and mouse").click()
    watching.wait_for_selector("#control", state="visible", timeout=15_000)
    page.wait_for_selector("#watcher-list:has-text('has your keyboard and mouse')", timeout=15_000)
    owned = page.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]
    watching.locator("#screen canvas").click(position={"x": 5, "y": 5})
    watching.keyboard.type("?")
    page.wait_for_function(f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
                           arg=owned, timeout=15_000)
    page.get_by_role("button", name="Take back").click()
    watching.wait_for_selector("#control", state="hidden", timeout=15_000)

    # Revoke: the watcher is told, and the owner sees nobody watching.
    page.get_by_role("button", name="Revoke").click()
    watching.wait_for_selector("#notice:has-text('revoked')", timeout=15_000)
    page.wait_for_selector("#watchers-line:has-text('Nobody is watching.')", timeout=15_000)
    wait_until(lambda: not page.locator("#watcher-count").is_visible(), timeout_s=15,
               what="the watcher count gone")
    other.close()

    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    context.close()


@pytest.fixture
def shared() -> Iterator[Path]:
    """What the nodes of one portal share: the database and the image store."""
    root = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_the_tools_and_a_watch_link_work_through_a_node_that_does_not_hold_the_visit(
    portal_make: PortalFactory, shared: Path,
) -> None:
    """Two nodes of one portal (as tests/e2e/test_relay.py): the visit runs on A; the
    owner's tools and the watcher reach it through B, which finds the visit of a
    watch link by its token and pipes the page and the socket to A."""
    holder, other = nodes_start(portal_make, shared)
    owner_here = PortalVisitor(holder.url)
    session = owner_here.session_start("demo")
    api = f"/api/sessions/{session['id']}"
    owner = PortalVisitor(other.url, cookies=owner_here.cookies)

    assert owner.request("POST", f"{api}/keys", {"combo": "alt-tab"})[0] == 204
    status, link = owner.request("POST", f"{api}/watchers")
    assert status == 201
    watching_b = PortalVisitor(other.url)
    status, page = watching_b.request("GET", link["watch_url"])
    assert status == 200
    assert b"Portal demo" in page

    async def through_b() -> None:
        seeing = await watching_b.display(f"/ws/watch/{link['token']}/vnc")
        seeing.start()
        assert seeing.lit_pixels() > 10000
        state = await asyncio.to_thread(watching_b.request, "GET", f"/watch/{link['token']}/state")
        assert state == (200, {"state": "running", "ended_reason": None, "exhibit": "demo",
                               "title": "Portal demo", "watchers": 1, "control": False,
                               "drives": []})
        keyed = await PortalVisitor(other.url).display(f"/ws/watch/{link['token']}/vnc")
        await keyed.type_text("x")
        assert (await close_code_of(keyed.transport))[0] == 4400  # type: ignore[arg-type]
        assert (await asyncio.to_thread(owner.request, "DELETE", f"{api}/watchers"))[0] == 204
        assert await ended_with(seeing) == 4401

    asyncio.run(through_b())
    # The screenshot through B is A's machine's screen.
    request = urllib.request.Request(other.url + f"{api}/screenshot.png",
                                     headers={"Cookie": owner.cookie_header()})
    with urllib.request.urlopen(request, timeout=30) as response:
        png = response.read()
        assert response.headers["Content-Type"] == "image/png"
    assert struct.unpack(">II", png[16:24]) == (640, 480)
    assert owner.session_end(session["id"]) == 204
