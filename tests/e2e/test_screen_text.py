"""The screen as text, through the served portal and Chromium.

A text file with box-drawing and accented characters of code page 437 is brought
in on a floppy and shown with DOS's TYPE on a FreeDOS machine from the warm pool:
`screen.txt` holds the line exactly, as Unicode, with the cursor where DOS left
it; the page's Screen as text panel shows it and its live region announces the
new line; the page says the machine runs in text mode 80x25; a watcher reads the
same text, over the API and on the watch page; someone else's browser gets 404;
on the demo's Windows desktop the page says the machine shows graphics at 640x480,
and screen.txt answers `409 graphics_mode`.
"""
from __future__ import annotations

import re
import urllib.request
from typing import Any

from sessions.machines.screen import code_page_table
from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.wait import wait_until

TIMEOUT_S = 60
# What the file holds, in code page 437: box drawing, accents, shades and two of
# the glyphs the PC draws for control characters (0x01, 0x03).
MARKER = "╔═╡ Café Ñandú ½ ░▒▓ ☺♥ ╞═╗"
PROMPT = "A:\\>"
# The page's words for the machine's state (80 by 25, with a multiplication sign).
RUNNING_TEXT = "Running · text mode 80\u00d725"
RUNNING_GRAPHICS = "Running · graphics 640\u00d7480"


def test_a_dos_screen_read_as_text_by_its_owner_its_page_and_a_watcher(
        portal_make: PortalFactory, browser: Any) -> None:
    portal = portal_make()
    # Software emulation: a floppy does not boot under nested KVM.
    # Added and prepared in one Python, as each command alone would.
    portal.manage_each(
        ["add_exhibit", str(FREEDOS_GAMES), "--slug", "dos", "--title", "FreeDOS", "--boot", "floppy",
         "--accelerator", "tcg", "--code-page", "437", "--publish"],
        ["prepare_exhibit", "dos", "--wait-text", PROMPT, "--still", "1"])
    visitor = PortalVisitor(portal.url)
    status, exhibit = visitor.request("GET", "/api/exhibits/dos")
    assert status == 200
    assert exhibit["machine"]["code_page"] == 437

    context = browser.new_context(viewport={"width": 1200, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=portal.url)
    page = context.new_page()
    page.goto(portal.url + "/exhibits/dos/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    text_path = f"{portal.url}/api/sessions/{session_id}/screen.txt"

    # The page says, in words, that the machine runs and in which mode.
    page.wait_for_selector(f"#machine-state:has-text('{RUNNING_TEXT}')", timeout=30_000)

    # The panel: the prompt, read over the events socket while the panel is open.
    page.get_by_role("button", name="Screen as text").click()
    panel_text = page.get_by_role("region", name="Screen as text").locator("pre")
    page.wait_for_function("(prompt) => document.getElementById('screen-text-pre').textContent"
                           ".includes(prompt)", arg=PROMPT, timeout=30_000)
    assert panel_text.get_attribute("aria-label")

    # Files in: the marker on a floppy, shown with TYPE.
    token = next(cookie["value"] for cookie in context.cookies() if cookie["name"] == "csrftoken")
    uploaded = page.request.post(
        f"{portal.url}/api/sessions/{session_id}/media", headers={"X-CSRFToken": token},
        multipart={"files": {"name": "marker.txt", "mimeType": "text/plain",
                             "buffer": cp437(MARKER) + b"\r\n"}})
    assert uploaded.status == 201, uploaded.text()
    drive = uploaded.json()["drive"].upper()
    typed = page.request.post(f"{portal.url}/api/sessions/{session_id}/keys",
                              headers={"X-CSRFToken": token},
                              data={"text": f"TYPE {drive}:MARKER.TXT\n"})
    assert typed.status == 204, typed.text()

    def screen() -> tuple[list[str], str]:
        answer = page.request.get(text_path)
        assert answer.status == 200, answer.text()
        assert answer.headers["content-type"] == "text/plain; charset=utf-8"
        return answer.text().split("\n"), answer.headers["x-cursor"]

    def typed_out() -> bool:
        lines, _ = screen()
        return MARKER in lines and _prompt_after(lines, MARKER)
    try:
        wait_until(typed_out, timeout_s=TIMEOUT_S, what="the marker and the next prompt on the screen")
    except AssertionError:
        raise AssertionError("\n".join(screen()[0])) from None
    lines, cursor = screen()
    # One line per row, trailing spaces removed, each ended by a newline.
    assert len(lines) == 26
    assert lines[-1] == ""
    assert all(line == line.rstrip() for line in lines)
    assert lines[lines.index(MARKER)] == MARKER
    prompt_row = max(row for row, line in enumerate(lines) if line == PROMPT)
    assert cursor == f"{len(PROMPT)},{prompt_row}"

    # The page's panel holds it too, and its live region said the new line.
    page.wait_for_function("(marker) => document.getElementById('screen-text-pre').textContent"
                           ".includes(marker)", arg=MARKER, timeout=15_000)
    page.wait_for_function("(marker) => document.getElementById('screen-text-announce').textContent"
                           ".includes(marker)", arg=MARKER, timeout=15_000)
    assert page.get_attribute("#screen-text-announce", "aria-live") == "polite"
    # Copy screen text: the whole screen on the clipboard.
    page.get_by_role("button", name="Copy screen text").click()
    page.wait_for_selector("#screen-text-status:has-text('Copied')", timeout=15_000)
    assert MARKER in page.evaluate("() => navigator.clipboard.readText()")

    # A watcher reads the same text; another browser gets nothing.
    made = page.request.post(f"{portal.url}/api/sessions/{session_id}/watchers",
                             headers={"X-CSRFToken": token})
    assert made.status == 201, made.text()
    watch_token = made.json()["token"]
    with urllib.request.urlopen(f"{portal.url}/api/watch/{watch_token}/screen.txt", timeout=30) as answer:
        assert answer.headers["X-Cursor"] == cursor
        assert answer.read().decode("utf-8").split("\n") == lines
    # The watch page's panel too, and its words for the machine's state.
    other = browser.new_context(viewport={"width": 1000, "height": 700})
    watching = other.new_page()
    watching.goto(f"{portal.url}/watch/{watch_token}/")
    watching.get_by_role("button", name="Screen as text").click()
    watching.wait_for_function("(marker) => document.getElementById('screen-text-pre').textContent"
                               ".includes(marker)", arg=MARKER, timeout=15_000)
    watching.wait_for_selector(f"#machine-state:has-text('{RUNNING_TEXT}')", timeout=15_000)
    other.close()
    stranger = PortalVisitor(portal.url)
    status, body = stranger.request("GET", f"/api/sessions/{session_id}/screen.txt")
    assert (status, body["error"]) == (404, "not_found")
    status, body = stranger.request("GET", "/api/watch/no-such-link/screen.txt")
    assert status == 404

    # The demo's Windows desktop is graphics: the page says so, and so does the API.
    windows = browser.new_context(viewport={"width": 1000, "height": 700})
    desktop = windows.new_page()
    desktop.goto(portal.url + "/exhibits/demo/")
    desktop.get_by_role("button", name="Start").click()
    desktop.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    desktop.wait_for_selector(f"#machine-state:has-text('{RUNNING_GRAPHICS}')", timeout=30_000)
    desktop.get_by_role("button", name="Screen as text").click()
    desktop.wait_for_selector("#screen-text-graphics:has-text('graphics')", timeout=15_000)
    assert desktop.locator("#screen-text-pre").is_hidden()
    answer = desktop.request.get(desktop.url.replace("/sessions/", "/api/sessions/") + "screen.txt")
    assert answer.status == 409, answer.text()
    body = answer.json()
    assert body["error"] == "graphics_mode"
    assert (body["width"], body["height"]) == (640, 480)
    assert body["detail"]
    desktop.get_by_role("button", name="End").click()
    desktop.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    windows.close()

    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    status, body = visitor.request("GET", f"/api/sessions/{session_id}/screen.txt")
    assert status == 404
    answer = page.request.get(text_path)
    assert answer.status == 409
    assert answer.json()["error"] == "session_ended"
    context.close()


def cp437(text: str) -> bytes:
    """text in the bytes a PC draws it from, the control characters' glyphs too."""
    table = code_page_table(437)
    return bytes(table.index(character, 1) for character in text)


def _prompt_after(lines: list[str], marker: str) -> bool:
    """Whether DOS has shown its prompt again after the marker (TYPE is done)."""
    return any(line == PROMPT for line in lines[lines.index(marker) + 1:])
