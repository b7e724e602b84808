"""Visitors' keyboards and the guest's, through the served portal (real Daphne,
real Chromium, real QEMU).

Chromium is given a French (AZERTY) and a German (QWERTZ) keyboard as a page
sees one: key events (over the DevTools protocol) whose `key` (what the key
prints) and `code` (where it is) disagree as they do on those keyboards, so
noVNC sends the keysym of the one and the scancode of the other. They type
into FreeDOS on a US layout, which writes what arrived to a file (read back
through the visit's files), and into the keyboard guest (tests/guests/
keyboard.asm), a stand-in for DOS with KEYB GR that turns scancodes into
characters with the German table and turns the screen green when the line it
read is the one expected.

The display socket's allow-list and bounds are checked on the wire too: each
refused message closes the socket with 4400 or 4413, and QEMU serves the next
connection.
"""
from __future__ import annotations

import asyncio
import json
import struct
import zipfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import Portal, PortalFactory
from tests.e2e.test_hostile_clients import close_code_of, when_free
from tests.support.keyboard_guest import EXPECTED, GREEN, GREY, keyboard_guest_build
from tests.support.portal_http import PortalVisitor
from tests.support.wait import wait_until
from tests.support.websocket import WebSocketTransport

TIMEOUT_MS = 60_000
SHIFT, ALTGR = "shift", "altgr"
# What a key prints -> (where it is, the modifier it needs), as the page sees it.
LETTERS = {letter: (f"Key{letter.upper()}", None) for letter in "abcdefghijklmnopqrstuvwxyz"}
AZERTY: dict[str, tuple[str, str | None]] = {
    **LETTERS, "a": ("KeyQ", None), "q": ("KeyA", None), "z": ("KeyW", None), "w": ("KeyZ", None),
    "m": ("Semicolon", None), " ": ("Space", None), "\n": ("Enter", None), "/": ("Period", SHIFT),
    "@": ("Digit0", ALTGR), "!": ("Slash", None), "<": ("IntlBackslash", None),
    ">": ("IntlBackslash", SHIFT), ".": ("Comma", SHIFT),
}
QWERTZ: dict[str, tuple[str, str | None]] = {
    **LETTERS, "y": ("KeyZ", None), "z": ("KeyY", None), " ": ("Space", None), "\n": ("Enter", None),
    "/": ("Digit7", SHIFT), "@": ("KeyQ", ALTGR), "#": ("Backslash", None), "<": ("IntlBackslash", None),
    ">": ("IntlBackslash", SHIFT), "|": ("IntlBackslash", ALTGR), ".": ("Period", None),
    ",": ("Comma", None), "!": ("Digit1", SHIFT), "ü": ("BracketLeft", None), "ß": ("Minus", None),
    "{": ("Digit7", ALTGR), "}": ("Digit0", ALTGR), "§": ("Digit3", SHIFT), "µ": ("KeyM", ALTGR),
    "€": ("KeyE", ALTGR), "\b": ("Backspace", None),
}
CONTROL_KEYS = {"\n": ("Enter", "\r", 13), "\b": ("Backspace", "", 8)}
MODIFIER_KEYS = {SHIFT: ("Shift", "ShiftLeft", 16), ALTGR: ("AltGraph", "AltRight", 225)}


def key_event(cdp: Any, kind: str, key: str, code: str, *, text: str = "", virtual: int = 0) -> None:
    cdp.send("Input.dispatchKeyEvent", {"type": kind, "key": key, "code": code, "text": text,
                                        "unmodifiedText": text, "windowsVirtualKeyCode": virtual})


def keyboard_type(cdp: Any, keyboard: dict[str, tuple[str, str | None]], text: str) -> None:
    """Type text as a visitor on that keyboard would: each character's key, with Shift
    or AltGr held where that keyboard needs it."""
    for character in text:
        printed = character.upper() if character.isupper() else character
        code, modifier = keyboard[character.lower() if character.isupper() else character]
        if character.isupper():
            modifier = SHIFT
        held = MODIFIER_KEYS.get(modifier or "")
        if held:
            key_event(cdp, "rawKeyDown", held[0], held[1], virtual=held[2])
        if character in CONTROL_KEYS:
            name, text, virtual = CONTROL_KEYS[character]
            key_event(cdp, "keyDown" if text else "rawKeyDown", name, name, text=text, virtual=virtual)
            key_event(cdp, "keyUp", name, name, virtual=virtual)
        else:
            virtual = ord(character.upper()) if character.isascii() and character.isalpha() else 0
            key_event(cdp, "keyDown", printed, code, text=printed, virtual=virtual)
            key_event(cdp, "keyUp", printed, code, virtual=virtual)
        if held:
            key_event(cdp, "keyUp", held[0], held[1], virtual=held[2])


@pytest.fixture
def portal(portal_make: PortalFactory, tmp_path: Path) -> Portal:
    """A portal with its defaults (the warm pool on) serving FreeDOS on a US layout
    (`dos`) and the keyboard guest on a German one (`keyb-gr`), each prepared."""
    site = portal_make(demo=False)
    # Software emulation: a floppy does not boot under nested KVM.
    # Added and prepared in one Python, as each command alone would.
    site.manage_each(
        ["add_exhibit", str(FREEDOS_GAMES), "--slug", "dos", "--title", "FreeDOS", "--boot", "floppy",
         "--accelerator", "tcg", "--publish"],
        ["add_exhibit", str(keyboard_guest_build(tmp_path)), "--slug", "keyb-gr", "--title", "KEYB GR",
         "--boot", "floppy", "--accelerator", "tcg", "--keyboard", "de", "--publish"],
        ["prepare_exhibit", "dos", "--wait-text", "A:\\>", "--still", "1"],
        ["prepare_exhibit", "keyb-gr", "--wait-text", "Keyboard guest", "--still", "1"])
    return site


def visit_open(page: Any, portal: Portal, slug: str) -> tuple[str, Any]:
    """Start a visit of the exhibit from its page; its id and a DevTools session with
    the machine's screen focused."""
    page.goto(f"{portal.url}/exhibits/{slug}/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url("**/sessions/*/")
    page.wait_for_selector('#state[data-state="running"]', timeout=TIMEOUT_MS)
    page.wait_for_function("() => { const c = document.querySelector('#screen canvas');"
                           " return c && c.width > 0; }", timeout=TIMEOUT_MS)
    focus(page)
    return page.url.rstrip("/").rsplit("/", 1)[1], page.context.new_cdp_session(page)


def focus(page: Any) -> None:
    page.locator("#screen canvas").click(position={"x": 5, "y": 5})


def file_of(page: Any, session_id: str, name: str) -> bytes | None:
    """A file the visit made on the machine's disk, from its files (the API's zip)."""
    response = page.request.get(f"/api/sessions/{session_id}/files.zip")
    if response.status != 200:
        return None
    archive = zipfile.ZipFile(BytesIO(response.body()))
    found = [entry for entry in archive.namelist() if entry.upper().endswith(name)]
    return archive.read(found[0]) if found else None


def file_holds(page: Any, session_id: str, name: str, content: bytes) -> None:
    wait_until(lambda: file_of(page, session_id, name) == content, timeout_s=60,
               what=f"{name} holding {content!r} (it holds {file_of(page, session_id, name)!r})")


def screen_colour(page: Any) -> tuple[int, int, int]:
    return tuple(page.evaluate("() => Array.from(document.querySelector('#screen canvas')"
                               ".getContext('2d').getImageData(4, 4, 1, 1).data.slice(0, 3))"))


def screen_turns(page: Any, colour: tuple[int, int, int]) -> None:
    wait_until(lambda: screen_colour(page) == colour, timeout_s=60,
               what=f"the keyboard guest's screen turning {colour} (it is {screen_colour(page)})")


def api(page: Any, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    csrf = next(cookie["value"] for cookie in page.context.cookies() if cookie["name"] == "csrftoken")
    response = page.request.fetch(path, method=method, data=json.dumps(body),
                                  headers={"Content-Type": "application/json", "X-CSRFToken": csrf})
    return response.status, (response.json() if response.status != 204 else None)


def test_what_is_printed_on_the_visitors_keys_arrives_on_the_guests_layout(portal: Portal,
                                                                           browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768}, base_url=portal.url)
    session_id, cdp = visit_open(page, portal, "dos")

    # A French and a German visitor type into a US FreeDOS: their letters, Shift and
    # AltGr characters and the key beside the left Shift arrive as printed.
    keyboard_type(cdp, AZERTY, "echo azerty/@!> FR.TXT\n")
    file_holds(page, session_id, "FR.TXT", b"azerty/@!\r\n")
    keyboard_type(cdp, QWERTZ, "echo qwertz/@#> DE.TXT\n")
    file_holds(page, session_id, "DE.TXT", b"qwertz/@#\r\n")

    # A character the guest's layout lacks is not sent, and the page says so.
    keyboard_type(cdp, QWERTZ, "echo ")
    keyboard_type(cdp, QWERTZ, "€")
    notice = page.locator("#keys-notice")
    notice.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "€" in notice.inner_text()

    # Keys by position: the physical keys arrive (QWERTZ's y and z keys are a US PC's z and y).
    toggle = page.get_by_role("button", name="Keys by position")
    toggle.click()
    page.wait_for_selector('#key-mode[aria-pressed="true"]')
    focus(page)
    keyboard_type(cdp, QWERTZ, "yz")
    toggle.click()
    page.wait_for_selector('#key-mode[aria-pressed="false"]')
    focus(page)
    keyboard_type(cdp, QWERTZ, "> POS.TXT\n")
    file_holds(page, session_id, "POS.TXT", b"zy\r\n")

    # The choice is remembered in this browser and set on its next visit.
    toggle.click()
    page.wait_for_selector('#key-mode[aria-pressed="true"]')
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=TIMEOUT_MS)

    # The keyboard guest, on a German layout: the German visitor's line arrives whole.
    session_id, cdp = visit_open(page, portal, "keyb-gr")
    wait_until(lambda: api(page, "GET", f"/api/sessions/{session_id}", {})[1]["key_mode"] == "positions",
               timeout_s=30, what="the remembered key mode set on the new visit")
    page.get_by_role("button", name="Keys by position").click()
    page.wait_for_selector('#key-mode[aria-pressed="false"]')
    focus(page)
    keyboard_type(cdp, QWERTZ, EXPECTED + "\n")
    screen_turns(page, GREEN)

    # Paste and the keys API type on the guest's layout too, and name what it cannot type.
    keyboard_type(cdp, QWERTZ, "x\b")  # the screen grey again, and the line empty
    screen_turns(page, GREY)
    status, _ = api(page, "POST", f"/api/sessions/{session_id}/keys", {"text": EXPECTED + "\n"})
    assert status == 204
    screen_turns(page, GREEN)
    status, refused = api(page, "POST", f"/api/sessions/{session_id}/keys", {"text": "5 €"})
    assert status == 400
    assert refused["error"] == "unsupported_keys"
    assert "'€' (U+20AC)" in refused["detail"]
    status, refused = api(page, "PUT", f"/api/sessions/{session_id}/key_mode", {"key_mode": "layout"})
    assert (status, refused["error"]) == (400, "bad_key_mode")


# --- The display socket's allow-list, on the wire ---------------------------------

async def stream_read(transport: WebSocketTransport, stream: bytearray, count: int) -> bytes:
    """The next count bytes of the server's stream (what came beyond them stays in stream)."""
    while len(stream) < count:
        stream.extend(await transport.receive())
    taken = bytes(stream[:count])
    del stream[:count]
    return taken


async def display_open(visitor: PortalVisitor, path: str) -> tuple[WebSocketTransport, bytearray]:
    """A display socket past the RFB handshake (the server's init read); what the
    server sent beyond it is returned as the start of the stream."""
    transport = await visitor.websocket(path)
    stream = bytearray()
    await stream_read(transport, stream, 12)
    await transport.send(b"RFB 003.008\n")
    count = (await stream_read(transport, stream, 1))[0]
    await stream_read(transport, stream, count)
    await transport.send(b"\x01")
    await stream_read(transport, stream, 4)
    await transport.send(b"\x01")
    header = await stream_read(transport, stream, 24)
    await stream_read(transport, stream, struct.unpack(">I", header[20:24])[0])
    return transport, stream


Rectangle = tuple[int, int, int, int]


async def update_rectangles(transport: WebSocketTransport, stream: bytearray) -> list[Rectangle]:
    """The rectangles of the next FramebufferUpdate (Raw, 32 bits a pixel)."""
    kind = (await stream_read(transport, stream, 1))[0]
    assert kind == 0, f"the server sent message {kind}, not an update"
    (count,) = struct.unpack(">xH", await stream_read(transport, stream, 3))
    rectangles = []
    for _ in range(count):
        x, y, width, height, encoding = struct.unpack(">HHHHi", await stream_read(transport, stream, 12))
        assert encoding == 0
        await stream_read(transport, stream, width * height * 4)
        rectangles.append((int(x), int(y), int(width), int(height)))
    return rectangles


RAW_PIXELS = b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0) \
    + struct.pack(">BxHi", 2, 1, 0)
REFUSED = [
    (bytes([77, 0, 0, 0]), 4400),                                   # no RFB message type
    (struct.pack(">BBH", 255, 9, 0), 4400),                         # no QEMU message
    (struct.pack(">BxBB", 250, 1, 2), 4400),                        # xvp: power commands
    (struct.pack(">Bxxxi", 6, 100 * 1024 * 1024) + b"x" * 1024, 4413),  # 100 MB of clipboard
    (struct.pack(">BxH", 2, 65535), 4413),                          # 65535 encodings
]


@pytest.fixture
def keyb_portal(portal_make: PortalFactory, tmp_path: Path) -> Portal:
    site = portal_make(demo=False)
    site.manage("add_exhibit", str(keyboard_guest_build(tmp_path)), "--slug", "keyb-gr",
                "--title", "KEYB GR", "--boot", "floppy", "--accelerator", "tcg", "--keyboard", "de",
                "--publish")
    return site


def test_the_display_takes_only_allowed_rfb_messages_within_bounds(keyb_portal: Portal) -> None:
    visitor = PortalVisitor(keyb_portal.url)
    session = visitor.session_start("keyb-gr")

    async def check() -> None:
        transport, stream = await display_open(visitor, session["vnc_path"])
        await transport.send(RAW_PIXELS + struct.pack(">BBHHHH", 3, 0, 0, 0, 720, 400))
        await update_rectangles(transport, stream)
        # Once the guest's screen is still (a new pixel format redraws it all, maybe
        # more than once), a request for one region is answered with that region
        # alone: it reached QEMU as it was sent.
        region = (64, 48, 96, 32)
        answers = []
        for _ in range(10):
            await transport.send(struct.pack(">BBHHHH", 3, 0, *region))
            answers.append(await update_rectangles(transport, stream))
            if answers[-1] and all(x >= 64 and y >= 48 and x + width <= 160 and y + height <= 80
                   for x, y, width, height in answers[-1]):
                break
        else:
            raise AssertionError(f"a request for {region} was never answered with it alone: {answers}")
        # A burst of 100,000 key events for a character the guest's layout lacks:
        # nothing reaches the guest, and the display goes on.
        euro = struct.pack(">BBHII", 255, 0, 1, 0x20AC, 0x12) + struct.pack(">BBHII", 255, 0, 0, 0x20AC, 0x12)
        burst = euro * 50_000
        for start in range(0, len(burst), 48_000):
            await transport.send(burst[start:start + 48_000])
        await transport.send(struct.pack(">BBHHHH", 3, 0, 0, 0, 16, 16))
        assert await update_rectangles(transport, stream)
        await transport.close()

        for message, code in REFUSED:
            transport, _ = await when_free(lambda: display_open(visitor, session["vnc_path"]))
            await transport.send(message)
            closed, reason = await close_code_of(transport)
            assert closed == code, (message[:8], closed, reason)
            assert reason
        # QEMU still serves the next connection.
        transport, stream = await when_free(lambda: display_open(visitor, session["vnc_path"]))
        await transport.send(RAW_PIXELS + struct.pack(">BBHHHH", 3, 0, 0, 0, 720, 400))
        assert await update_rectangles(transport, stream)
        await transport.close()

    asyncio.run(check())
    assert visitor.session_state(session["id"]) == "running"
