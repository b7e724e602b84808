"""The pages a visitor sees, and what they say about the machine."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FREEDOS_2048, KVM, ExhibitFactory, visitor

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_lists_published_exhibits_and_hides_drafts(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048")
    await exhibit_create(FREEDOS_2048, slug="draft", title="Unfinished draft", published=False)
    page = (await visitor().get("/")).content.decode()
    assert "FreeDOS 2048" in page
    assert "/exhibits/freedos/" in page
    assert "Unfinished draft" not in page
    response = await visitor().get("/exhibits/draft/")
    assert response.status_code == 404
    assert "Unfinished draft" not in response.content.decode()


async def test_it_shows_an_exhibit_with_its_start_button(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048")
    response = await visitor().get("/exhibits/freedos/")
    page = response.content.decode()
    assert response.status_code == 200
    assert "<h1>FreeDOS 2048</h1>" in page
    assert "1994" in page
    assert "Test" in page
    assert '<button id="start"' in page
    assert "csrftoken" in response.cookies


async def test_it_shows_the_sound_hardware_a_curator_chose(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    from portal.models import Exhibit

    await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048")
    page = (await visitor().get("/exhibits/freedos/")).content.decode()
    assert "Sound: PC speaker." in page
    await Exhibit.objects.filter(slug="freedos").aupdate(sound_adlib=True, sound_sb16=True)
    page = (await visitor().get("/exhibits/freedos/")).content.decode()
    assert "Sound: PC speaker, AdLib, Sound Blaster 16." in page
    exhibit = (await visitor().get("/api/exhibits/freedos")).json()
    assert exhibit["machine"]["sound"] == ["pcspk", "adlib", "sb16"]


@pytest.mark.parametrize(("setting", "label"), [
    pytest.param("kvm", "Hardware virtualisation (KVM)",
                 marks=pytest.mark.skipif(not KVM, reason="needs a usable /dev/kvm")),
    ("tcg", "Software emulation"),
])
async def test_it_says_whether_the_machine_runs_on_kvm_or_in_software(
    settings: Any, portal_dirs: Any, exhibit_create: ExhibitFactory, setting: str, label: str
) -> None:
    from sessions.node.broker import get_broker

    settings.PORTAL_ACCELERATOR = setting
    broker = await get_broker()
    try:
        await exhibit_create(FREEDOS_2048, slug="freedos")
        health = (await visitor().get("/healthz")).json()
        assert health["kvm"] is (setting == "kvm")
        browser = visitor()
        assert label in (await browser.get("/exhibits/freedos/")).content.decode()
        session = (await browser.post("/api/exhibits/freedos/sessions")).json()
        assert session["accelerator"] == setting
        page = (await browser.get(session["page_url"])).content.decode()
        assert ("KVM" if setting == "kvm" else "Software emulation") in page
        assert "/static/portal/session.js" in page
        await browser.delete(f"/api/sessions/{session['id']}")
    finally:
        await broker.shutdown()


async def test_it_runs_a_tcg_exhibit_in_software_even_on_a_kvm_host(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos", accelerator="tcg")
    exhibit = (await visitor().get("/api/exhibits/freedos")).json()
    assert exhibit["machine"]["accelerator"] == "tcg"
    browser = visitor()
    session = (await browser.post("/api/exhibits/freedos/sessions")).json()
    await broker.viewers.display_attach(session_id=session["id"])
    broker.viewers.display_detach(session_id=session["id"])
    machine = broker.machine(session["id"])
    assert (await machine.execute("query-kvm"))["enabled"] is False
    await browser.delete(f"/api/sessions/{session['id']}")


async def test_it_serves_the_pinned_novnc_client_itself() -> None:
    import json

    from channels.testing import ApplicationCommunicator

    from portal.asgi import application
    from tests.conftest import REPO

    pinned = json.loads((REPO / "package.json").read_text())["dependencies"]["@novnc/novnc"]
    installed = json.loads((REPO / "node_modules/@novnc/novnc/package.json").read_text())
    assert installed["version"] == pinned
    # Read the messages directly: the last body message may omit "body" (valid ASGI).
    communicator = ApplicationCommunicator(application, {
        "type": "http", "method": "GET", "path": "/static/novnc/core/rfb.js",
        "query_string": b"", "headers": [], "http_version": "1.1", "scheme": "http",
        "server": ("testserver", 80),
    })
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(timeout=10)
    assert start["status"] == 200
    assert (b"Cache-Control", b"public, max-age=3600") in start["headers"]
    body = b""
    while True:
        message = await communicator.receive_output(timeout=10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    assert b"export default class RFB" in body


def test_embed_origins_must_be_origins(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "portal.settings", "PORTAL_DATA_DIR": str(tmp_path),
             "PORTAL_EMBED_ORIGINS": "https://museum.example/exhibits"})
    assert result.returncode != 0
    assert ("PORTAL_EMBED_ORIGINS: 'https://museum.example/exhibits' is not an origin; "
            "write scheme://host[:port]") in result.stderr
