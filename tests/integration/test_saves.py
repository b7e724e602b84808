"""Saved visits on a real FreeDOS: saved while it runs, resumed on a new machine.

The save is made through the API as the session page makes it, read back as the
exhibit page sends it (a multipart form), and the resumed guest is read from its
own screen (text memory) and disk.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.importer import sha256_path
from sessions.machines.prepare import StartCondition
from sessions.machines.visitfile import HEADER, SIGNATURE_BYTES
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, visitor
from tests.support.guest import wait_for_text

pytestmark = pytest.mark.django_db(transaction=True)

AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)


@pytest.fixture
async def games(broker: Any, exhibit_create: ExhibitFactory) -> Any:
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, AT_PROMPT)
    return exhibit


async def saved_bytes(browser: Any, session_id: str) -> tuple[int, bytes, str]:
    response = await browser.post(f"/api/sessions/{session_id}/save")
    if response.status_code != 200:
        return response.status_code, response.content, ""
    body = b"".join([chunk async for chunk in response.streaming_content])
    return 200, body, response["Content-Disposition"]


async def test_it_saves_a_visit_and_resumes_it_with_its_screen_and_files(broker: Any, games: Any) -> None:
    master = sha256_path(Path(games.image.path))
    browser = visitor()
    session = (await browser.post("/api/exhibits/games/sessions")).json()
    rfb = await display_watch(browser, session["vnc_path"])
    machine = broker.machine(session["id"])
    try:
        await rfb.type_text("echo kept > kept.txt\n")
        await wait_for_text(machine, rfb, "A:\\>echo kept > kept.txt", timeout_s=30)
        # A checkpoint (its snapshots stay out of the file) and a floppy of the
        # visitor's own files in B: (saved whole, in the drive's place).
        response = await browser.post(f"/api/sessions/{session['id']}/checkpoints")
        assert response.status_code == 201, response.content
        response = await browser.post(f"/api/sessions/{session['id']}/media",
                                      {"files": SimpleUploadedFile("note.txt", b"brought in\r\n")})
        assert response.status_code == 201, response.content
        await rfb.type_text("echo come back tomorrow\n")
        await wait_for_text(machine, rfb, "come back tomorrow\n", timeout_s=30)
        status, body, disposition = await saved_bytes(browser, session["id"])
        assert status == 200, body
        assert disposition.startswith('attachment; filename="games-'), disposition
        assert disposition.endswith('.visit"'), disposition
        assert body.startswith(HEADER)
        # The run directory keeps nothing of the save once it is sent.
        assert not [path for path in machine.run_dir.iterdir() if path.name.startswith("save-")]
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")

    upload = SimpleUploadedFile("games.visit", body, content_type="application/octet-stream")
    response = await browser.post("/api/exhibits/games/sessions", {"visit": upload})
    assert response.status_code == 201, response.content
    resumed = response.json()
    rfb = await display_watch(browser, resumed["vnc_path"])
    try:
        machine = broker.machine(resumed["id"])
        screen = await machine.text_screen()
        assert "come back tomorrow" in screen
        await rfb.type_text("type kept.txt\n")
        await wait_for_text(machine, rfb, "type kept.txt\nkept", timeout_s=30)
        await rfb.type_text("type B:NOTE.TXT\n")
        await wait_for_text(machine, rfb, "type B:NOTE.TXT\nbrought in", timeout_s=30)
        # A resumed visit takes checkpoints like any other.
        response = await browser.post(f"/api/sessions/{resumed['id']}/checkpoints")
        assert response.status_code == 201, response.content
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{resumed['id']}")
    assert sha256_path(Path(games.image.path)) == master

    # One byte changed: refused before anything is unpacked.
    changed = bytearray(body)
    changed[len(HEADER) + 100] ^= 1
    response = await browser.post("/api/exhibits/games/sessions",
                                  {"visit": SimpleUploadedFile("x.visit", bytes(changed))})
    assert response.status_code == 400, response.content
    assert response.json()["error"] == "bad_save"
    response = await browser.post("/api/exhibits/games/sessions",
                                  {"visit": SimpleUploadedFile("x.visit", body[:-SIGNATURE_BYTES - 1])})
    assert response.status_code == 400
    await asyncio.sleep(0)
