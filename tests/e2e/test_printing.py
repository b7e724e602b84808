"""Printing, through the served portal: what FreeDOS prints on LPT1 arrives as a PDF.

One portal with its defaults (the warm pool on) and one visit on a FreeDOS
machine: a marker echoed to PRN, a text file with box drawing and Epson bold,
a PostScript file copied to LPT1 from the visitor's floppy, and hostile
PostScript (a loop, reading and writing the server's files, a memory bomb),
each contained with a sentence for the visitor while the next job still
prints; the prints listed, fetched, in files.zip, out of another browser's
reach, and gone with the visit.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import subprocess
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.websocket import WebSocketTransport

SLUG = "dos"
TIMEOUT_S = 60

POSTSCRIPT = (b"%!PS-Adobe-3.0\n%%Pages: 2\n/Helvetica findfont 20 scalefont setfont\n"
              b"%%Page: 1 1\n72 700 moveto (PS-MARKER-ONE) show showpage\n"
              b"%%Page: 2 2\n72 700 moveto (PS-MARKER-TWO) show showpage\n%%EOF\n")
HOSTILE = {
    "LOOP.PS": b"%!PS\n{ 1 pop } loop\n\x04",
    "READ.PS": b"%!PS\n(/etc/passwd) (r) file 80 string readstring pop 72 700 moveto show showpage\n\x04",
    "WRITE.PS": b"%!PS\n(/tmp/portal-print-escape) (w) file (x) writestring showpage\n\x04",
    "BOMB.PS": b"%!PS\n/a 2000000000 string def showpage\n\x04",
}
# Box drawing in code page 437 and Epson ESC/P bold (ESC E ... ESC F), then a form feed.
BOXED = (b"\x1bEBOLD-HEADING\x1bF\r\n\xc9\xcd\xcd\xcd\xbb\r\n\xba BOX\xba\r\n\xc8\xcd\xcd\xcd\xbc\r\n"
         b"TEXT-MARKER-2\r\n\x0c")


@pytest.fixture
def portal(portal_make: PortalFactory) -> Portal:
    """Defaults but for Ghostscript's CPU and wall-clock limits, kept short for the loop."""
    site = portal_make({"PORTAL_PRINT_CPU_S": "2", "PORTAL_PRINT_TIMEOUT_S": "6"}, demo=False)
    # Added and prepared in one Python, as each command alone would.
    site.manage_each(
        ["add_exhibit", str(FREEDOS_GAMES), "--slug", SLUG, "--title", "FreeDOS", "--boot", "floppy",
         "--year", "1994", "--accelerator", "tcg", "--publish"],
        ["prepare_exhibit", SLUG, "--wait-text", "A:\\>", "--still", "1"])
    return site


def typed(visitor: PortalVisitor, session_id: str, text: str) -> None:
    status, body = visitor.request("POST", f"/api/sessions/{session_id}/keys", {"text": text})
    assert status == 204, body


def upload(visitor: PortalVisitor, session_id: str, files: dict[str, bytes]) -> dict[str, Any]:
    """The visitor's files onto the machine's floppy, as the page's drop zone sends them."""
    boundary = uuid.uuid4().hex
    body = b""
    for name, content in files.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\""
                 f"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(visitor.base_url + f"/api/sessions/{session_id}/media", data=body,
                                     method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    request.add_header("X-CSRFToken", visitor.cookie("csrftoken") or "")
    with visitor.opener.open(request, timeout=60) as response:
        assert response.status == 201
        return dict(json.load(response))


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "print.pdf"
    path.write_bytes(pdf)
    return subprocess.run(["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True,
                          text=True).stdout


async def next_print_event(events: WebSocketTransport) -> dict[str, Any]:
    """The next `printed` or `print_failed` event on the page's events socket."""
    while True:
        event = json.loads(await asyncio.wait_for(events.receive_text(), timeout=TIMEOUT_S))
        if event["type"] in {"printed", "print_failed"}:
            return dict(event)


async def printing(visitor: PortalVisitor, stranger: PortalVisitor, session: dict[str, Any],
                   tmp_path: Path) -> None:
    session_id = session["id"]
    events = await visitor.websocket(session["events_path"])
    try:
        # DOS's ECHO to PRN: a job without a form feed, ended by the idle pause.
        await asyncio.to_thread(typed, visitor, session_id, "ECHO PRN-MARKER-1 > PRN\n")
        event = await next_print_event(events)
        assert event["type"] == "printed", event
        first = event["print"]
        assert first["kind"] == "text"
        assert first["pages"] == 1
        status, pdf = visitor.request("GET", first["url"])
        assert status == 200
        assert pdf.startswith(b"%PDF")
        assert visitor.last_headers["Content-Type"] == "application/pdf"
        assert "PRN-MARKER-1" in pdf_text(pdf, tmp_path)

        shown = upload(visitor, session_id, {"MARK.PS": POSTSCRIPT, "BOX.TXT": BOXED, **HOSTILE})
        drive = shown["drive"].upper()

        # Box drawing and bold, ended by its form feed.
        await asyncio.to_thread(typed, visitor, session_id, f"COPY /B {drive}:\\BOX.TXT LPT1\n")
        event = await next_print_event(events)
        assert event["type"] == "printed", event
        status, pdf = visitor.request("GET", event["print"]["url"])
        text = pdf_text(pdf, tmp_path)
        assert "BOLD-HEADING" in text
        assert "TEXT-MARKER-2" in text
        assert "╔═══╗" in text, text
        assert "╚═══╝" in text, text
        fonts = subprocess.run(["pdffonts", str(tmp_path / "print.pdf")], capture_output=True,
                               text=True, check=True).stdout
        assert "Bold" in fonts, fonts

        # Each hostile job is stopped with a sentence for the visitor; the visit goes on.
        for name in HOSTILE:
            await asyncio.to_thread(typed, visitor, session_id, f"COPY /B {drive}:\\{name} LPT1\n")
            event = await next_print_event(events)
            assert event["type"] == "print_failed", (name, event)
            assert "PostScript" in event["detail"], event
        assert not Path("/tmp/portal-print-escape").exists()

        # And the next PostScript job still prints, its two pages with their text.
        await asyncio.to_thread(typed, visitor, session_id, f"COPY /B {drive}:\\MARK.PS LPT1\n")
        event = await next_print_event(events)
        assert event["type"] == "printed", event
        made = event["print"]
        assert made["kind"] == "postscript"
        assert made["pages"] == 2
        status, pdf = visitor.request("GET", made["url"])
        text = pdf_text(pdf, tmp_path)
        assert "PS-MARKER-ONE" in text
        assert "PS-MARKER-TWO" in text
    finally:
        await events.close()

    status, listed = visitor.request("GET", f"/api/sessions/{session_id}/prints")
    assert status == 200
    assert [entry["kind"] for entry in listed["prints"]] == ["text", "text", "postscript"]
    assert set(listed["prints"][0]) >= {"id", "pages", "kind", "created_at", "url"}

    # Another browser reaches neither the list nor a print.
    assert stranger.request("GET", f"/api/sessions/{session_id}/prints")[0] == 404
    assert stranger.request("GET", made["url"])[0] == 404
    assert visitor.request("GET", f"/api/sessions/{session_id}/prints/{'0' * 16}.pdf")[0] == 404

    # Take my files: the prints are in the zip.
    status, body = visitor.request("GET", f"/api/sessions/{session_id}/files.zip")
    assert status == 200
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert [name for name in names if name.startswith("PRINTS/")] == [
        "PRINTS/print-01.pdf", "PRINTS/print-02.pdf", "PRINTS/print-03.pdf"]


def test_what_freedos_prints_arrives_as_pdfs_and_goes_with_the_visit(portal: Portal, browser: Any,
                                                                     tmp_path: Path) -> None:
    visitor = PortalVisitor(portal.url)
    stranger = PortalVisitor(portal.url)
    session = visitor.session_start(SLUG, timeout_s=TIMEOUT_S)
    # In a thread of its own: the browser's driver runs an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, printing(visitor, stranger, session, tmp_path)).result()

    # The visitor's page (reloaded: it asks the list) says what was printed last, with
    # its PDF to open or download, and lists every print.
    context = browser.new_context(viewport={"width": 1024, "height": 768})
    context.add_cookies([{"name": cookie.name, "value": cookie.value or "", "url": portal.url}
                         for cookie in visitor.cookies])
    page = context.new_page()
    page.goto(portal.url + session["page_url"])
    latest = page.locator("#prints-latest")
    latest.get_by_text("Printed: 2 pages").wait_for(timeout=30_000)
    assert latest.get_by_role("link", name="Open the PDF").get_attribute("href").endswith(".pdf")
    assert latest.get_by_role("link", name="Download").get_attribute("download") == ""
    assert page.locator("#prints-list li").count() == 3
    context.close()
    prints_dir = portal.run_dir / session["id"]
    assert prints_dir.is_dir()
    # A reset gives the visit a fresh machine; what it printed stays.
    status, _ = visitor.request("POST", f"/api/sessions/{session['id']}/reset")
    assert status == 200
    status, listed = visitor.request("GET", f"/api/sessions/{session['id']}/prints")
    assert len(listed["prints"]) == 3
    url = listed["prints"][0]["url"]
    assert visitor.request("GET", url)[0] == 200

    assert visitor.session_end(session["id"]) == 204
    assert not prints_dir.exists(), "the prints outlived the visit"
    assert visitor.request("GET", url)[0] == 404
    assert visitor.request("GET", f"/api/sessions/{session['id']}/prints")[1] == {"prints": []}
