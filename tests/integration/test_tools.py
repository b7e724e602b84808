"""The visitor's tools on a real FreeDOS: typing through the API, the screenshot,
and a watch link that shows the machine but never reaches it.

What was typed is read back from the guest itself: its text screen (video
memory) and the file DOS wrote on its floppy (mtools on a copy of the overlay).
"""
from __future__ import annotations

import dataclasses
import json
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from sessions.machines.prepare import StartCondition
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from sessions.placement.watch import WATCH_LINKS_PER_VISIT
from sessions.web.consumers import CLOSE_REVOKED, CLOSE_TOO_MANY_VIEWERS, CLOSE_UNSUPPORTED_DATA
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, visitor, ws_communicator
from tests.support.guest import disk_file, wait_for_screen, wait_for_text
from tests.support.rfb import CommunicatorTransport, RfbClient
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)

AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)
PROMPT = "A:\\>"


@pytest.fixture
async def games(broker: Any, exhibit_create: ExhibitFactory) -> Any:
    # Software emulation: floppy boot fails under nested KVM (as tests/integration/test_sandbox.py).
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, AT_PROMPT)
    return exhibit


class Visit:
    def __init__(self, broker: Any, browser: AsyncClient, session: dict[str, Any], rfb: RfbClient) -> None:
        self.broker, self.browser, self.session, self.rfb = broker, browser, session, rfb
        self.id = session["id"]

    @property
    def machine(self) -> Any:
        return self.broker.machine(self.id)

    async def keys(self, body: Any) -> Any:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await self.browser.post(f"/api/sessions/{self.id}/keys", content,
                                       content_type="application/json")

    async def prompt_line(self) -> str:
        """The last line of the screen that starts with the prompt."""
        lines = [line for line in (await self.machine.text_screen()).splitlines() if line.startswith(PROMPT)]
        return lines[-1] if lines else ""

    async def overlay_file(self, name: str) -> bytes | None:
        row = await VisitorSession.objects.aget(id=self.id)
        return await disk_file(self.machine, Path(row.run_dir) / "disk.qcow2", name)

    async def close(self) -> None:
        await self.rfb.close()
        await self.browser.delete(f"/api/sessions/{self.id}")


async def visit(broker: Any) -> Visit:
    browser = visitor()
    response = await browser.post("/api/exhibits/games/sessions")
    assert response.status_code == 201
    session = response.json()
    one = Visit(broker, browser, session, await display_watch(browser, session["vnc_path"]))
    await wait_for_text(one.machine, one.rfb, PROMPT, timeout_s=60)
    return one


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    length, kind = struct.unpack(">I4s", png[8:16])
    assert kind == b"IHDR"
    assert length == 13
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def png_lit_pixels(png: bytes) -> int:
    """How many pixels of an 8-bit RGB PNG are not black: its data inflated and
    unfiltered row by row (PNG's five filters), as an image viewer does."""
    offset, data = 8, b""
    while offset + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[offset:offset + 8])
        if kind == b"IDAT":
            data += png[offset + 8:offset + 8 + length]
        offset += 12 + length
    width, height = png_size(png)
    assert png[24:26] == b"\x08\x02", "8-bit RGB"
    raw = zlib.decompress(data)
    stride = 3 * width
    assert len(raw) == height * (1 + stride)
    previous = bytearray(stride)
    lit = 0
    for row in range(height):
        kind = raw[row * (1 + stride)]
        line = bytearray(raw[row * (1 + stride) + 1:(row + 1) * (1 + stride)])
        for i in range(stride):
            left = line[i - 3] if i >= 3 else 0
            up = previous[i]
            corner = previous[i - 3] if i >= 3 else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                estimate = left + up - corner
                near = min((abs(estimate - left), left), (abs(estimate - up), up),
                           (abs(estimate - corner), corner), key=lambda pair: pair[0])[1]
                line[i] = (line[i] + near) & 0xFF
        lit += sum(1 for x in range(0, stride, 3) if line[x] | line[x + 1] | line[x + 2])
        previous = line
    return lit


async def test_it_types_text_with_shift_exactly_at_a_dos_prompt(broker: Any, games: Any) -> None:
    one = await visit(broker)
    try:
        idle_before = broker.keeper.idle_s(one.id)
        assert idle_before is not None
        assert idle_before > 0
        began = time.monotonic()
        response = await one.keys({"text": "echo Hello (1+2)> OUT.TXT\n"})
        assert response.status_code == 204, response.content
        # Typing is input: the idle clock started again during the call (without it,
        # the clock would count from before the call began).
        idle_after = broker.keeper.idle_s(one.id)
        assert idle_after is not None
        assert idle_after <= time.monotonic() - began
        await wait_for_text(one.machine, one.rfb, "A:\\>echo Hello (1+2)> OUT.TXT", timeout_s=30)

        async def written() -> bool:
            return await one.overlay_file("OUT.TXT") == b"Hello (1+2)\r\n"

        await eventually(written, timeout_s=30, interval_s=0.5)

        # Every printable character of a US keyboard, shifted or not, arrives as itself
        # (on a line DOS does not run: `rem`, never Enter).
        every = "rem ~!@#$%^&*()_+{}|:\"<>? `-=[]\\;',./ AZaz09"
        assert (await one.keys({"text": every})).status_code == 204
        await wait_for_screen(one.machine, one.rfb, lambda screen: PROMPT + every in screen.splitlines(),
                              timeout_s=30, what="the typed line")
        assert await one.prompt_line() == PROMPT + every

        # A line longer than a screen row, typed at the bottom of the screen: DOS
        # scrolls while keys come (in software emulation, with the keyboard unread for
        # a while), and none is lost.
        assert (await one.keys({"combo": "ctrl-c"})).status_code == 204
        long = "rem " + "".join(chr(ord("a") + number % 26) for number in range(116))
        assert (await one.keys({"text": long})).status_code == 204
        await wait_for_screen(
            one.machine, one.rfb,
            lambda screen: "".join(row.ljust(80) for row in screen.splitlines()).rstrip().endswith(long),
            timeout_s=30, what="the long line")

        # A combination: Ctrl+C abandons the line, and DOS gives a fresh prompt.
        assert (await one.keys({"combo": "ctrl-c"})).status_code == 204
        await wait_for_screen(one.machine, one.rfb, lambda screen: screen.splitlines()[-1] == PROMPT
                              if screen.splitlines() else False, timeout_s=30, what="a fresh prompt")
    finally:
        await one.close()


async def test_it_refuses_bad_typing_with_a_sentence_and_types_nothing(broker: Any, games: Any) -> None:
    one = await visit(broker)
    try:
        limit = broker.config.keys_max_chars
        too_long = await one.keys({"text": "a" * (limit + 1)})
        assert too_long.status_code == 400
        assert too_long.json()["error"] == "too_long"
        assert str(limit) in too_long.json()["detail"]

        unsupported = await one.keys({"text": "café ☕"})
        assert unsupported.status_code == 400
        assert unsupported.json()["error"] == "unsupported_keys"
        assert "'é'" in unsupported.json()["detail"]
        assert "☕" in unsupported.json()["detail"]

        combo = await one.keys({"combo": "ctrl-alt-explode"})
        assert combo.status_code == 400
        assert "ctrl-alt-delete" in combo.json()["detail"]

        for malformed in (b"{not json", b"[1, 2]", b'{"text": "a", "combo": "ctrl-c"}', b'{"text": 5}',
                          b"{}"):
            response = await one.keys(malformed)
            assert response.status_code == 400, malformed
            assert response.json()["detail"]

        stranger = visitor()
        await stranger.get("/api/exhibits")
        refused = await stranger.post(f"/api/sessions/{one.id}/keys", {"text": "dir\n"},
                                      content_type="application/json")
        assert refused.status_code == 404
        forged = await one.browser.post("/api/sessions/not-a-session/keys", {"text": "dir\n"},
                                        content_type="application/json")
        assert forged.status_code == 404

        # None of it reached the machine: the prompt line is still empty.
        assert await one.prompt_line() == PROMPT
    finally:
        await one.close()
    ended = await one.keys({"text": "dir\n"})
    assert ended.status_code == 409
    assert ended.json()["error"] == "session_ended"
    assert ended.json()["detail"]


async def test_it_gives_a_screenshot_at_the_guests_own_resolution(broker: Any, games: Any) -> None:
    one = await visit(broker)
    try:
        response = await one.browser.get(f"/api/sessions/{one.id}/screenshot.png")
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert re.fullmatch(r'attachment; filename="games-\d{4}-\d\d-\d\d-\d{4}\.png"',
                            response["Content-Disposition"]), response["Content-Disposition"]
        png = response.content
        # The guest's own picture, as its display has it (text mode: 720x400), not scaled.
        assert png_size(png) == (one.rfb.width, one.rfb.height)
        # It decodes, and shows the prompt, not a blank screen.
        assert png_lit_pixels(png) > 50
        # Nothing is left beside the machine's own files.
        row = await VisitorSession.objects.aget(id=one.id)
        assert not list(Path(row.run_dir).glob("screenshot-*"))

        stranger = visitor()
        await stranger.get("/api/exhibits")
        assert (await stranger.get(f"/api/sessions/{one.id}/screenshot.png")).status_code == 404
    finally:
        await one.close()
    assert (await one.browser.get(f"/api/sessions/{one.id}/screenshot.png")).status_code == 409


async def watcher_open(path: str) -> tuple[RfbClient, CommunicatorTransport]:
    """A watcher's viewer: another browser, with nothing but the link."""
    stranger = visitor()
    communicator = ws_communicator(stranger, path)
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    transport = CommunicatorTransport(communicator)
    return RfbClient(transport), transport


async def test_a_watcher_sees_the_machine_but_no_key_of_theirs_reaches_it(broker: Any, games: Any) -> None:
    broker.config = dataclasses.replace(broker.config, watchers_per_session=2)
    one = await visit(broker)
    try:
        created = await one.browser.post(f"/api/sessions/{one.id}/watchers")
        assert created.status_code == 201
        link = created.json()
        assert link["watch_url"] == f"/watch/{link['token']}/"
        assert len(link["token"]) >= 22
        vnc = f"/ws/watch/{link['token']}/vnc"

        watcher, _ = await watcher_open(vnc)
        await watcher.handshake()
        await watcher.first_update()
        assert (watcher.width, watcher.height) == (one.rfb.width, one.rfb.height)
        assert watcher.lit_pixels() > 0, "the prompt, as the owner sees it"
        assert broker.viewers.watcher_count(one.id) == 1
        # Watchers are not viewers: they keep no machine alive.
        assert broker.keeper.visit(one.id).viewers == 1
        watcher.start()

        # A watcher's key: the socket is closed with 4400, and the key never reaches DOS.
        idle_before = broker.keeper.idle_s(one.id)
        keyed, keyed_transport = await watcher_open(vnc)
        await keyed.handshake()
        await keyed.first_update()
        await keyed.type_text("echo leaked > LEAK.TXT\n")
        with pytest.raises(ConnectionError):
            await keyed.read_until_closed()
        assert keyed_transport.close_code == CLOSE_UNSUPPORTED_DATA
        # A watcher is never input: the idle clock ran on.
        idle_after = broker.keeper.idle_s(one.id)
        assert idle_after is not None
        assert idle_before is not None
        assert idle_after >= idle_before

        # The owner's keys do reach it: the line holds the owner's text and nothing else.
        await one.rfb.type_text("rem owner")
        await wait_for_text(one.machine, one.rfb, PROMPT + "rem owner", timeout_s=30)
        assert await one.prompt_line() == PROMPT + "rem owner"

        # A pointer event is refused too.
        pointing, pointing_transport = await watcher_open(vnc)
        await pointing.handshake()
        await pointing.first_update()
        await pointing.pointer(10, 10, buttons=1)
        with pytest.raises(ConnectionError):
            await pointing.read_until_closed()
        assert pointing_transport.close_code == CLOSE_UNSUPPORTED_DATA

        # Hand-over: the owner gives one watcher the keyboard and mouse; its keys then
        # reach DOS and count as input, until the owner takes them back.
        helper, helper_transport = await watcher_open(vnc + "?watcher=helper-0001")
        await helper.handshake()
        await helper.first_update()
        listed = (await one.browser.get(f"/api/sessions/{one.id}/watchers")).json()
        assert "helper-0001" in listed["names"]
        assert listed["control"] is None
        control = f"/api/sessions/{one.id}/watchers/control"
        unknown = await one.browser.post(control, {"watcher": "nobody-0001"}, content_type="application/json")
        assert unknown.status_code == 404
        assert unknown.json()["detail"]
        stranger = visitor()
        await stranger.get("/api/exhibits")
        assert (await stranger.post(control, {"watcher": "helper-0001"},
                                    content_type="application/json")).status_code == 404
        given = await one.browser.post(control, {"watcher": "helper-0001"}, content_type="application/json")
        assert given.status_code == 204
        idle_before = broker.keeper.idle_s(one.id)
        await helper.type_text(" helped")
        await wait_for_text(one.machine, one.rfb, PROMPT + "rem owner helped", timeout_s=30)
        idle_after = broker.keeper.idle_s(one.id)
        assert idle_after is not None
        assert idle_before is not None
        assert idle_after < idle_before
        assert (await one.browser.delete(control)).status_code == 204
        await helper.type_text("x")
        with pytest.raises(ConnectionError):
            await helper.read_until_closed()
        assert helper_transport.close_code == CLOSE_UNSUPPORTED_DATA
        assert await one.prompt_line() == PROMPT + "rem owner helped"

        # The cap: the owner's setting allows two watchers at once.
        second, _ = await watcher_open(vnc)
        await second.handshake()
        third, third_transport = await watcher_open(vnc)
        with pytest.raises(ConnectionError):
            await third.handshake()
        assert third_transport.close_code == CLOSE_TOO_MANY_VIEWERS

        # Links are capped per visit (each POST makes one; revoking forgets them all).
        for _ in range(WATCH_LINKS_PER_VISIT - 1):
            assert (await one.browser.post(f"/api/sessions/{one.id}/watchers")).status_code == 201
        over = await one.browser.post(f"/api/sessions/{one.id}/watchers")
        assert over.status_code == 409
        assert over.json()["error"] == "watch_link_limit"

        # Revoke: every watcher is closed with 4401, and the link opens nothing any more.
        assert (await one.browser.delete(f"/api/sessions/{one.id}/watchers")).status_code == 204
        with pytest.raises(ConnectionError):
            await watcher.wait_closed()
        assert watcher.transport.close_code == CLOSE_REVOKED  # type: ignore[attr-defined]
        assert broker.viewers.watcher_count(one.id) == 0
        late, late_transport = await watcher_open(vnc)
        with pytest.raises(ConnectionError):
            await late.handshake()
        assert late_transport.close_code == 4404
        # The owner's own display is untouched, and may make a link again.
        assert broker.keeper.visit(one.id).displays == 1
        assert (await one.browser.post(f"/api/sessions/{one.id}/watchers")).status_code == 201
    finally:
        await one.close()
