"""A visit held by one node, used whole through another (portal.relay).

Two nodes of one portal on this host share one database (SQLite here), image
store and secret key, as in test_nodes.py: the holder (node A, which prepared
the demo, started with --proxy-headers as in a cluster) runs the visitor's
machine; the same browser then talks to node B only, which pipes every request
for the visit to A: the Session, the page, the display, the events, the sound,
reset, End, and the close codes, exactly as A answers them.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sessions.machines.machine import process_alive
from tests.e2e.conftest import Portal, PortalFactory
from tests.e2e.test_hostile_clients import MIB, SCREEN_LIT, close_code_of, log_says, rss_bytes
from tests.e2e.test_sound import F5, peak
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until
from tests.support.websocket import WebSocketTransport

# The demo's About icon, and a pixel of the About window's title bar (see test_visit.py).
ABOUT_ICON = (256, 102)
ABOUT_TITLE_BAR = (540, 222)


@pytest.fixture
def shared() -> Iterator[Path]:
    """What the nodes of one portal share: the database and the image store."""
    root = Path(tempfile.mkdtemp(prefix="pr-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def nodes_start(portal_make: PortalFactory, shared: Path, **extra: str) -> tuple[Portal, Portal]:
    """The holder (A, with the prepared demo) and another node (B), both alive."""
    settings = {**extra,
        "PORTAL_DATABASE_PATH": str(shared / "portal.sqlite3"),
        "PORTAL_IMAGE_DIR": str(shared / "images"),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "PORTAL_NODE_HEARTBEAT_S": "0.5", "PORTAL_NODE_DEAD_S": "3",
        "PORTAL_GRACE_S": "600",
    }
    holder = portal_make(settings, proxy_headers=True)
    other = portal_make(settings, demo=False)
    wait_until(lambda: len(node_addresses(shared)) == 2, timeout_s=15, what="both nodes' rows")
    return holder, other


def node_addresses(shared: Path) -> dict[str, str]:
    """Each node's row as the other nodes read it: its name and where it is reached."""
    with contextlib.closing(sqlite3.connect(shared / "portal.sqlite3", timeout=20)) as database:
        return dict(database.execute("SELECT name, address FROM visits_node").fetchall())


def daphne_log(portal: Portal) -> str:
    return (portal.root / "daphne.log").read_text(errors="replace")


def test_a_visit_held_by_one_node_is_whole_through_another(
    portal_make: PortalFactory, shared: Path,
) -> None:
    holder, other = nodes_start(portal_make, shared)
    here = PortalVisitor(holder.url)
    session = here.session_start("demo")
    session_id, api = session["id"], f"/api/sessions/{session['id']}"
    # The same browser (its cookie jar), now talking to B only, from an address of its own.
    there = PortalVisitor(other.url, cookies=here.cookies, local_address="127.0.0.2")
    stranger, stranger_here = PortalVisitor(other.url), PortalVisitor(holder.url)

    # Each node's server told its settings where it listens (PORTAL_NODE_ADDRESS unset).
    other_node = there.request("GET", "/healthz")[1]["node"]
    assert node_addresses(shared) == {session["node"]: f"127.0.0.1:{holder.port}",
                                      other_node: f"127.0.0.1:{other.port}"}
    assert other_node != session["node"]

    visit_dirs = [holder.machine(session_id)[1]]
    # The Session through B is A's, node and all; a stranger gets A's 404 through B.
    assert there.request("GET", api) == here.request("GET", api) == (200, session)
    assert stranger.request("GET", api) == stranger_here.request("GET", api)
    assert stranger.request("GET", api)[0] == 404
    status, page = there.request("GET", session["page_url"])
    assert status == 200
    assert session_id in page.decode()
    assert stranger.request("GET", session["page_url"])[0] == 404
    # The holder saw the visitor's address (X-Forwarded-For), not B's.
    assert any(line.startswith("127.0.0.2:") and api in line for line in daphne_log(holder).splitlines())

    async def through_b() -> None:
        # The display: the RFB handshake and the demo's desktop in its first update.
        rfb = await there.display(session["vnc_path"])
        assert rfb.lit_pixels() > 10000, "the demo's desktop, not a black screen"
        # The events socket: the page's state message, as A sends it.
        events = await there.websocket(session["events_path"])
        async with asyncio.timeout(10):
            state = json.loads(await events.receive_text())
        assert state["type"] == "state"
        assert state["id"] == session_id
        assert state["state"] == "running"
        # The sound socket: its format, then the speaker's tune when F5 reaches the machine.
        sound = await there.websocket(session["audio_path"])
        async with asyncio.timeout(10):
            assert json.loads(await sound.receive_text())["type"] == "format"
        await rfb.press(F5)
        async with asyncio.timeout(2):
            while peak(await sound.receive()) <= 1000:
                pass
        await sound.close()
        # Close codes and their sentences come back as the holder chose them.
        codes = {"stranger": await close_code_of(await stranger.websocket(session["vnc_path"])),
                 "origin": await close_code_of(
                     await there.websocket(session["vnc_path"], origin="https://elsewhere.example"))}
        text = await there.websocket(session["vnc_path"])
        await text.send_text("hello")
        codes["text"] = await close_code_of(text)
        big = await there.websocket(session["vnc_path"])
        await big.send(b"\x00" * (100 * 1024))
        codes["big"] = await close_code_of(big)
        assert {name: code for name, (code, _) in codes.items()} == {
            "stranger": 4403, "origin": 4403, "text": 4400, "big": 4413}
        assert "binary" in codes["text"][1]
        assert "102400 bytes" in codes["big"][1]
        direct = await stranger_here.websocket(session["vnc_path"])
        assert (await close_code_of(direct))[0] == 4403

        # Reset through B: A's new machine; the display open through B learns it (4412).
        status, reset = await asyncio.to_thread(there.request, "POST", f"{api}/reset")
        assert status == 200
        assert reset["id"] == session_id
        assert reset["node"] == session["node"]
        assert (await close_code_of(rfb.transport))[0] == 4412  # type: ignore[arg-type]
        visit_dirs.append(holder.machine(session_id)[1])
        watching = await there.display(session["vnc_path"])
        watching_here = await here.display(session["vnc_path"])
        assert watching.lit_pixels() > 10000

        # End through B: both displays, relayed and direct, close with the same code.
        assert await asyncio.to_thread(there.session_end, session_id) == 204
        relayed_code = await close_code_of(watching.transport)  # type: ignore[arg-type]
        direct_code = await close_code_of(watching_here.transport)  # type: ignore[arg-type]
        assert relayed_code == direct_code
        assert relayed_code[0] == 4410
        async with asyncio.timeout(10):
            ended = [json.loads(await events.receive_text()) for _ in range(2)]
        assert ended[-1]["type"] == "ended"
        assert ended[-1]["reason"] == "visitor"
        assert await events.closed() == 4410

    asyncio.run(through_b())
    ended = here.request("GET", api)
    assert ended[0] == 200
    assert ended[1]["state"] == "ended"
    # Ended, the visit is B's to answer from the database: the same answer.
    assert there.request("GET", api) == ended
    # Both of the visit's machines are gone (the warm pool's wait beside them).
    for run_dir in visit_dirs:
        assert not processes_naming(run_dir)
        assert not run_dir.exists()
    for site in (holder, other):
        assert "Exception inside application" not in daphne_log(site)
        assert "Traceback" not in daphne_log(site)


def test_a_relayed_viewer_who_stops_reading_costs_a_bounded_amount_and_comes_back(
    portal_make: PortalFactory, shared: Path,
) -> None:
    """The visitor asks B for thousands of raw full-screen updates of A's machine and
    reads none: B stops reading A's socket, neither node grows past a few MiB, and
    the viewer is closed with 4408 and its sentence, as a direct one is."""
    holder, other = nodes_start(portal_make, shared, PORTAL_VIEWER_STUCK_S="10")
    here = PortalVisitor(holder.url)
    session = here.session_start("demo")
    there = PortalVisitor(other.url, cookies=here.cookies)
    assert holder.process is not None
    assert other.process is not None
    pids = {"holder": holder.process.pid, "relay": other.process.pid}

    async def visit() -> None:
        rfb = await there.display(session["vnc_path"])
        before = {name: rss_bytes(pid) for name, pid in pids.items()}
        peak = dict(before)
        transport = rfb.transport
        assert isinstance(transport, WebSocketTransport)
        asking = asyncio.create_task(rfb.demand_unread(transport.send_nowait))
        closed = log_says(other, "read nothing for 10 s")
        began = time.monotonic()
        try:
            while not await closed():
                peak = {name: max(peak[name], rss_bytes(pid)) for name, pid in pids.items()}
                assert time.monotonic() - began < 40, "the stuck viewer was never closed"
                await asyncio.sleep(0.25)  # a sampling interval, not a wait for a condition
        finally:
            asking.cancel()
        grown = {name: (peak[name] - before[name]) / MIB for name in pids}
        assert all(value <= 64 for value in grown.values()), f"grew (MiB): {grown}"
        code, reason = await close_code_of(transport)
        assert code == 4408
        assert "keep up" in reason
        again = await there.display(session["vnc_path"])
        assert again.lit_pixels() > 10000
        await again.close()

    asyncio.run(visit())
    assert there.session_end(session["id"]) == 204
    assert "Traceback" not in daphne_log(other)


def test_a_display_through_another_node_outlives_nothing_when_the_holder_dies(
    portal_make: PortalFactory, shared: Path,
) -> None:
    """The holder is killed (SIGKILL) under a display relayed by B: B closes it with
    1011 and a sentence, answers the visit's requests with 502 while the holder's row
    still looks alive, and the visit's real end once the holder is known dead."""
    holder, other = nodes_start(portal_make, shared)
    here = PortalVisitor(holder.url)
    session = here.session_start("demo")
    api = f"/api/sessions/{session['id']}"
    there = PortalVisitor(other.url, cookies=here.cookies)
    machine, _ = holder.machine(session["id"])
    # The visit's machine and the warm pool's: all the holder's, to end once it is back.
    leftovers = processes_naming(holder.run_dir)

    async def display_while_the_holder_dies() -> tuple[int | None, str]:
        rfb = await there.display(session["vnc_path"])
        holder.crash()
        return await close_code_of(rfb.transport)  # type: ignore[arg-type]

    code, reason = asyncio.run(display_while_the_holder_dies())
    assert code == 1011
    assert "stopped answering" in reason
    killed = time.monotonic()
    answers: list[tuple[int, Any]] = []

    def visit_ended() -> bool:
        answers.append(there.request("GET", api))
        return answers[-1][0] == 200 and answers[-1][1]["state"] == "ended"

    wait_until(visit_ended, timeout_s=15, what="the dead holder's visit to end")
    assert time.monotonic() - killed <= 15
    assert answers[-1][1]["ended_reason"] == "server"
    # Before that: the holder could not be reached, said as the API says errors; then,
    # the holder known dead, B answered from the database until the visit was ended.
    unreachable = [body for status, body in answers[:-1] if status == 502]
    assert unreachable
    assert all(body["error"] == "node_unreachable" and body["detail"]
                               for body in unreachable)
    assert all(body["state"] == "running" for status, body in answers[:-1] if status != 502)
    assert "Traceback" not in daphne_log(other)

    # Back, the holder ends its own leftover machine.
    holder.serve()
    assert machine in leftovers
    wait_until(lambda: not any(map(process_alive, leftovers)), timeout_s=30,
               what="the holder back to end its leftover machines")


def test_the_page_served_by_another_node_shows_and_drives_the_holders_machine(
    portal_make: PortalFactory, shared: Path, browser: Any,
) -> None:
    holder, other = nodes_start(portal_make, shared)
    here = PortalVisitor(holder.url)
    session = here.session_start("demo")
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    context.add_cookies([{"name": cookie.name, "value": cookie.value or "", "url": other.url}
                         for cookie in here.cookies])
    _, run_dir = holder.machine(session["id"])
    page = context.new_page()
    page.goto(other.url + session["page_url"])
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function(SCREEN_LIT, timeout=30_000)
    # The mouse reaches A's machine through B: the About window opens.
    canvas = page.locator("#screen canvas")
    box = canvas.bounding_box()
    assert box is not None
    canvas.click(position={"x": ABOUT_ICON[0] * box["width"] / 640,
                           "y": ABOUT_ICON[1] * box["height"] / 480})
    page.wait_for_function(
        f"() => {{ const d = document.querySelector('#screen canvas').getContext('2d')"
        f".getImageData({ABOUT_TITLE_BAR[0]}, {ABOUT_TITLE_BAR[1]}, 1, 1).data;"
        f" return d[0] === 0 && d[1] === 0 && d[2] > 150; }}",
        timeout=15_000,
    )
    # End, on B's page, ends A's machine.
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=30_000)
    assert here.request("GET", f"/api/sessions/{session['id']}")[1]["state"] == "ended"
    wait_until(lambda: not processes_naming(run_dir), timeout_s=15, what="A's machine to end")
    context.close()
