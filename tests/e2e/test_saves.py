"""Saved visits through the served portal: Save to my computer in Chromium, Resume
from a file in a new browser, a running program that goes on counting, and every
kind of bad file refused by the real server (Daphne) with nothing left behind.

One portal (the warm pool on) serves two FreeDOS exhibits: `dos`, the games floppy
prepared at its prompt (a visit resumes its start state), and `counter`, the
project's counter guest booted cold (no start state: a save over the master).
"""
from __future__ import annotations

import hashlib
import lzma
import re
import socket
import struct
from pathlib import Path
from typing import Any

from django.utils.crypto import salted_hmac

from sessions.machines.visitfile import HEADER, MANIFEST, SIGNATURE_BYTES
from sessions.node.saves import SIGNING_SALT
from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import Portal, PortalFactory
from tests.support.boot_floppy import GUESTS, boot_floppy_build
from tests.support.portal_http import PortalVisitor
from tests.support.wait import wait_until

TIMEOUT_S = 60
SECRET = "saved-visits-test-key-" + "k" * 40
SAVE_MAX_BYTES = 2 * 1024 * 1024
VISIT_NAME = re.compile(r'attachment; filename="dos-\d{4}-\d\d-\d\d-\d{4}\.visit"')
COUNT = re.compile(r"COUNT=(\d+)")


def post_file(visitor: PortalVisitor, slug: str, content: bytes) -> tuple[int, Any]:
    """POST a saved visit as the exhibit page's form does (multipart, field `visit`)."""
    return visitor.request_file("POST", f"/api/exhibits/{slug}/sessions", "visit", content, "a.visit")


def signed(body: bytes, secret: str = SECRET) -> bytes:
    """Header and compressed body, signed as a portal with that key signs."""
    signer = salted_hmac(SIGNING_SALT, b"", secret=secret, algorithm="sha256")
    signer.update(body)
    return body + signer.digest()


def members(save: bytes) -> bytes:
    """The save's decompressed members."""
    return lzma.decompress(save[len(HEADER):-SIGNATURE_BYTES])


def member_head(name: str, size: int) -> bytes:
    return struct.pack(">H", len(name)) + name.encode() + struct.pack(">Q", size)


def count_on(visitor: PortalVisitor, session_id: str) -> int:
    """The counter on the guest's screen; -1 before it shows (the BIOS's boot picture)."""
    status, text = visitor.request("GET", f"/api/sessions/{session_id}/screen.txt")
    if status == 409:
        return -1
    assert status == 200, text
    found = COUNT.search(text.decode() if isinstance(text, bytes) else str(text))
    return int(found.group(1)) if found else -1


def master_sha256(site: Portal, slug: str) -> str:
    path = site.manage("shell", "-c", "from portal.models import Exhibit; "
                       f"print(Exhibit.objects.get(slug='{slug}').image.path)").strip().splitlines()[-1]
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def leftovers(site: Portal) -> list[str]:
    """What of visits is in the run directory besides machines (pooled or running)."""
    return sorted(path.name for path in site.run_dir.iterdir() if not path.name.startswith("m-"))


def declared_body(site: Portal, path: str, length: int) -> bytes:
    """The server's answer to a POST that declares a body of `length` bytes and sends none."""
    with socket.create_connection(("127.0.0.1", site.port), timeout=30) as connection:
        connection.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                           f"Content-Type: multipart/form-data; boundary=x\r\n"
                           f"Content-Length: {length}\r\n\r\n".encode())
        connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def typed(page: Any, session_id: str, text: str) -> None:
    status = page.evaluate("""async ([id, text]) => {
        const token = document.cookie.match(/csrftoken=([^;]+)/)[1];
        const response = await fetch(`/api/sessions/${id}/keys`, {method: "POST",
            headers: {"Content-Type": "application/json", "X-CSRFToken": token},
            body: JSON.stringify({text})});
        return response.status; }""", [session_id, text])
    assert status == 204


def page_screen(page: Any, session_id: str) -> str:
    return str(page.request.get(f"{page.url.split('/sessions/')[0]}/api/sessions/{session_id}/screen.txt")
               .text())


def test_a_saved_visit_goes_on_in_a_new_browser_and_bad_files_are_refused(
    portal_make: PortalFactory, browser: Any, tmp_path: Path
) -> None:
    site = portal_make({"DJANGO_SECRET_KEY": SECRET, "PORTAL_SAVE_MAX_BYTES": str(SAVE_MAX_BYTES)},
                       demo=False)
    site.manage("add_exhibit", str(FREEDOS_GAMES), "--slug", "dos", "--title", "FreeDOS",
                "--boot", "floppy", "--year", "1994", "--accelerator", "tcg", "--publish")
    site.manage("prepare_exhibit", "dos", "--wait-text", "A:\\>", "--still", "1")
    counter = boot_floppy_build(GUESTS / "counter.asm", tmp_path)
    site.manage("add_exhibit", str(counter), "--slug", "counter", "--title", "Counter",
                "--boot", "floppy", "--year", "1990", "--accelerator", "tcg", "--publish")
    master = master_sha256(site, "dos")

    # --- Save to my computer, in Chromium ------------------------------------------
    first = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = first.new_page()
    page.goto(site.url + "/exhibits/dos/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=TIMEOUT_S * 1000)
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    typed(page, session_id, "echo kept> KEPT.TXT\n")
    typed(page, session_id, "echo come back tomorrow\n")
    wait_until(lambda: page_screen(page, session_id).count("come back tomorrow") == 2,
               timeout_s=TIMEOUT_S, what="the typed line and its echo on screen")
    assert page.locator("#save-note").inner_text() == "(checkpoints are not included)"
    with page.expect_download(timeout=TIMEOUT_S * 1000) as download:
        page.get_by_role("button", name="Save to my computer").click()
    saved_path = tmp_path / download.value.suggested_filename
    download.value.save_as(saved_path)
    assert re.fullmatch(r"dos-\d{4}-\d\d-\d\d-\d{4}\.visit", saved_path.name), saved_path.name
    page.locator("#save-status", has_text="Saved").wait_for(timeout=TIMEOUT_S * 1000)
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=TIMEOUT_S * 1000)
    first.close()
    save = saved_path.read_bytes()
    assert save.startswith(HEADER)

    # --- Resume from a file, in a new browser ---------------------------------------
    second = browser.new_context(viewport={"width": 1280, "height": 800})
    page = second.new_page()
    page.goto(site.url + "/exhibits/dos/")
    page.get_by_text("Resume from a file").click()
    page.get_by_label("A visit you saved to your computer (a .visit file):").set_input_files(str(saved_path))
    page.get_by_role("button", name="Resume", exact=True).click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=TIMEOUT_S * 1000)
    resumed_id = page.url.rstrip("/").rsplit("/", 1)[1]
    assert resumed_id != session_id
    # The screen as it was left (the typed line and its echo), and the file on the disk.
    assert page_screen(page, resumed_id).count("come back tomorrow") == 2
    page.locator("#screen canvas, canvas").first.wait_for(timeout=TIMEOUT_S * 1000)
    typed(page, resumed_id, "type KEPT.TXT\n")
    wait_until(lambda: "type KEPT.TXT\nkept" in page_screen(page, resumed_id), timeout_s=TIMEOUT_S,
               what="the file written before the save, typed on the resumed machine")
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=TIMEOUT_S * 1000)
    second.close()

    # --- A running program goes on: the counter, from its cold boot -------------------
    visitor = PortalVisitor(site.url)
    counting = visitor.session_start("counter", timeout_s=TIMEOUT_S)
    wait_until(lambda: count_on(visitor, counting["id"]) >= 100, timeout_s=TIMEOUT_S,
               what="the counter to pass 100")
    before = count_on(visitor, counting["id"])
    status, counter_save = visitor.request("POST", f"/api/sessions/{counting['id']}/save")
    assert status == 200, counter_save
    assert visitor.session_end(counting["id"]) == 204
    status, again = post_file(visitor, "counter", counter_save)
    assert status == 201, again
    wait_until(lambda: visitor.request("GET", f"/api/sessions/{again['id']}")[1]["state"] == "running",
               timeout_s=TIMEOUT_S, what="the resumed counter to run")
    resumed_count = count_on(visitor, again["id"])
    # Booted again it would count from 0; resumed it goes on from where it was.
    assert resumed_count >= before, (resumed_count, before)
    wait_until(lambda: count_on(visitor, again["id"]) > resumed_count + 10, timeout_s=TIMEOUT_S,
               what="the resumed counter to keep counting")
    assert visitor.session_end(again["id"]) == 204

    # --- Bad files, each refused with a clear answer ---------------------------------
    def refused(content: bytes, slug: str = "dos") -> tuple[int, dict[str, Any]]:
        status, body = post_file(visitor, slug, content)
        assert isinstance(body, dict), body
        assert body.get("detail"), body
        assert leftovers(site) == [], leftovers(site)
        return status, body

    changed = bytearray(save)
    changed[len(save) // 2] ^= 0x01
    assert refused(bytes(changed))[1]["error"] == "bad_save"
    assert refused(save[:-1])[1]["error"] == "bad_save"
    assert refused(save[: len(save) // 2])[0] == 400
    recompressed = HEADER + lzma.compress(members(save), preset=6) + save[-SIGNATURE_BYTES:]
    assert refused(recompressed)[1]["error"] == "bad_save"
    other_portal = signed(save[:-SIGNATURE_BYTES], secret="another-portal-" + "x" * 40)
    status, body = refused(other_portal)
    assert (status, body["error"]) == (400, "bad_save")
    assert body["detail"] == "This file is damaged or was not made by this portal."
    # Another exhibit's page: 409, saying which exhibit the file is for.
    status, body = refused(save, "counter")
    assert (status, body["error"], body["exhibit"]) == (409, "save_mismatch", "dos")
    assert "FreeDOS" in body["detail"]
    # A compression bomb (signed with this portal's key, so only the bounds stop it):
    # its disk layer says it unpacks to 1 TiB.
    inside = members(save)
    (manifest_length,) = struct.unpack(">Q", inside[2 + len(MANIFEST):10 + len(MANIFEST)])
    manifest = inside[:10 + len(MANIFEST) + manifest_length]
    bomb = signed(HEADER + lzma.compress(manifest + member_head("state", 1 << 40) + b"\0" * (1 << 20)))
    status, body = refused(bomb)
    assert (status, body["error"]) == (400, "bad_save")
    assert "more than" in body["detail"]
    # Over the saves' limit: the view's 413, and the server's before it reads the body.
    status, body = refused(save + b"\0" * (SAVE_MAX_BYTES - len(save) + 1024))
    assert (status, body["error"]) == (413, "save_too_large")
    limit = SAVE_MAX_BYTES + 64 * 1024
    answer = declared_body(site, "/api/exhibits/dos/sessions", limit + 1)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert f"{limit} bytes".encode() in answer, answer[:300]
    # Every other route keeps the general limit.
    answer = declared_body(site, f"/api/sessions/{session_id}/save", 1024 * 1024 + 1)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"1048576 bytes" in answer, answer[:300]
    # The exhibit changed since (its machine now has more memory): its start state is gone.
    site.manage("shell", "-c", "from portal.models import Exhibit; "
                "Exhibit.objects.filter(slug='dos').update(memory_mb=32)")
    status, body = refused(save)
    assert (status, body["error"]) == (409, "save_mismatch")
    assert "updated since" in body["detail"]
    assert master_sha256(site, "dos") == master
