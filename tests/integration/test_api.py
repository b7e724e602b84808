"""The JSON API against real qemu-img and QEMU, as a museum site or page would use it."""
from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from sessions.machines.host import install_id
from sessions.machines.machine import process_alive
from sessions.models import VisitorSession
from tests.conftest import FREEDOS_2048, ExhibitFactory, visitor

pytestmark = pytest.mark.django_db(transaction=True)


async def start(client: AsyncClient, slug: str = "freedos") -> dict[str, Any]:
    response = await client.post(f"/api/exhibits/{slug}/sessions")
    assert response.status_code == 201, response.content
    return response.json()  # type: ignore[no-any-return]


async def running(broker: Any, session_id: str) -> VisitorSession:
    """Wait for the broker's launch to finish, as the page's WebSocket does."""
    await broker.viewers.display_attach(session_id=session_id)
    broker.viewers.display_detach(session_id=session_id)
    return await VisitorSession.objects.aget(id=session_id)


async def test_it_lists_published_exhibits_only(broker: Any, exhibit_create: ExhibitFactory) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS")
    await exhibit_create(FREEDOS_2048, slug="secret", published=False)
    response = await visitor().get("/api/exhibits")
    assert response.status_code == 200
    (exhibit,) = response.json()["exhibits"]
    assert exhibit["slug"] == "freedos"
    assert exhibit["url"] == "http://testserver/exhibits/freedos/"
    assert exhibit["machine"] == {"cpu": "486", "memory_mb": 16,
                                  "accelerator": broker.config.machines.accelerator, "boot": "floppy",
                                  "sound": ["pcspk"], "speed": "host",
                                  "code_page": 437, "keyboard": "us", "printer": "text"}
    # A floppy exhibit takes visitors' files in its second drive.
    assert exhibit["files_in"] == "b"
    assert exhibit["instant_start"] is False
    assert set(exhibit) >= {"slug", "title", "year", "publisher", "description", "url"}


@pytest.mark.parametrize("path", ["/api/exhibits/nope", "/api/exhibits/secret",
                                  "/api/sessions/nope", "/api/nothing-here"])
async def test_it_answers_unknown_things_with_json_404(
    broker: Any, exhibit_create: ExhibitFactory, path: str
) -> None:
    await exhibit_create(FREEDOS_2048, slug="secret", published=False)
    response = await visitor().get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"] == "not_found"
    assert response.json()["detail"]


async def test_it_will_not_start_a_draft(broker: Any, exhibit_create: ExhibitFactory) -> None:
    await exhibit_create(FREEDOS_2048, slug="secret", published=False)
    response = await visitor().post("/api/exhibits/secret/sessions")
    assert response.status_code == 404


async def test_it_runs_a_session_and_discards_everything_at_delete(
    broker: Any, exhibit_create: ExhibitFactory, portal_dirs: Path
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    browser = visitor()
    session = await start(browser)
    assert len(session["id"]) == 32
    assert session["state"] in {"starting", "running"}
    assert session["page_url"] == f"/sessions/{session['id']}/"
    assert session["vnc_path"] == f"/ws/sessions/{session['id']}/vnc"
    assert session["events_path"] == f"/ws/sessions/{session['id']}/events"
    assert session["ended_reason"] is None
    assert session["queue_position"] is None

    row = await running(broker, session["id"])
    assert row.state == "running"
    assert row.pid is not None
    assert process_alive(row.pid)
    run_dir = Path(row.run_dir)
    assert {p.name for p in run_dir.iterdir()} >= {"disk.qcow2", "qmp.sock", "vnc.sock"}
    response = await browser.get(f"/api/sessions/{session['id']}")
    assert response.json()["state"] == "running"
    assert response.json()["started_at"]

    health = (await visitor().get("/healthz")).json()
    assert health["ok"] is True
    assert health["sessions"] == 1
    assert health["kvm"] is (broker.config.machines.accelerator == "kvm")
    assert health["qemu"].startswith("7.")
    assert health["capacity"] >= 1
    assert health["install"] == install_id(), "which install answered"

    response = await browser.delete(f"/api/sessions/{session['id']}")
    assert response.status_code == 204
    # Gone before the response was sent.
    assert not run_dir.exists()
    assert not process_alive(row.pid)
    ended = (await browser.get(f"/api/sessions/{session['id']}")).json()
    assert ended["state"] == "ended"
    assert ended["ended_reason"] == "visitor"


async def test_it_keeps_one_live_session_per_browser(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    browser = visitor()
    first = await start(browser)
    response = await browser.post("/api/exhibits/freedos/sessions")
    assert response.status_code == 409
    assert response.json()["error"] == "session_exists"
    assert response.json()["id"] == first["id"]
    await browser.delete(f"/api/sessions/{first['id']}")
    second = await start(browser)
    assert second["id"] != first["id"]


async def test_it_hides_a_session_from_other_browsers(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    owner, stranger = visitor(), visitor()
    session = await start(owner)
    await stranger.get("/api/exhibits")
    for response in (
        await stranger.get(f"/api/sessions/{session['id']}"),
        await stranger.delete(f"/api/sessions/{session['id']}"),
        await stranger.get(f"/sessions/{session['id']}/"),
    ):
        assert response.status_code == 404
    # The stranger's DELETE did not touch it.
    assert (await owner.get(f"/api/sessions/{session['id']}")).json()["state"] != "ended"


@pytest.mark.parametrize("session_id", ["x", "../../etc", "A" * 200, "%00", "a" * 32])
async def test_it_treats_malformed_or_unknown_ids_as_not_found(
    broker: Any, session_id: str
) -> None:
    browser = visitor()
    await browser.get("/api/exhibits")
    response = await browser.get(f"/api/sessions/{session_id}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


async def test_it_ends_a_machine_whose_base_is_missing_as_a_server_fault_and_serves_others(
    broker: Any, exhibit_create: ExhibitFactory, portal_dirs: Path
) -> None:
    other_bytes = portal_dirs / "other.img"
    other_bytes.write_bytes(FREEDOS_2048.read_bytes() + bytes(512))
    broken = await exhibit_create(other_bytes, slug="broken", title="Broken")
    await exhibit_create(FREEDOS_2048, slug="freedos")
    # A master that vanished from disk.
    Path(broken.image.path).chmod(0o644)
    Path(broken.image.path).rename(Path(broken.image.path + ".moved"))

    sad, happy = visitor(), visitor()
    session = await start(sad, "broken")
    assert await broker.keeper.wait_ended(session_id=session["id"], timeout_s=10)
    ended = (await sad.get(f"/api/sessions/{session['id']}")).json()
    assert ended["state"] == "ended"
    assert ended["ended_reason"] == "server"
    assert "disk image is missing" in ended["detail"]
    assert "/" not in ended["detail"]  # no host paths for visitors
    assert not (portal_dirs / "run" / session["id"]).exists()

    other = await start(happy)
    row = await running(broker, other["id"])
    assert row.state == "running"
    assert (await happy.get("/healthz")).json()["ok"] is True


async def test_it_ends_a_machine_that_qemu_refuses_as_crashed_without_leaking_details(
    broker: Any, exhibit_create: ExhibitFactory, portal_dirs: Path, settings: Any
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    broker.config = dataclasses.replace(
        broker.config, machines=dataclasses.replace(broker.config.machines, qemu_binary="false"))
    browser = visitor()
    session = await start(browser)
    assert await broker.keeper.wait_ended(session_id=session["id"], timeout_s=10)
    ended = (await browser.get(f"/api/sessions/{session['id']}")).json()
    assert ended["ended_reason"] == "crashed"
    assert "could not start" in ended["detail"]
    assert "/" not in ended["detail"]  # no host paths for visitors
    assert not (portal_dirs / "run" / session["id"]).exists()


async def test_it_requires_the_csrf_token_for_unsafe_requests(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    browser = AsyncClient(enforce_csrf_checks=True)
    refused = await browser.post("/api/exhibits/freedos/sessions")
    assert refused.status_code == 403
    assert refused.json()["error"] == "csrf_failed"
    assert (await browser.get("/api/csrf")).status_code == 204
    token = browser.cookies["csrftoken"].value
    accepted = await browser.post("/api/exhibits/freedos/sessions", headers={"X-CSRFToken": token})
    assert accepted.status_code == 201
    await browser.delete(f"/api/sessions/{accepted.json()['id']}", headers={"X-CSRFToken": token})


async def test_it_ends_a_session_nobody_watches_after_the_grace_period(
    broker: Any, exhibit_create: ExhibitFactory, portal_dirs: Path
) -> None:
    await exhibit_create(FREEDOS_2048, slug="freedos")
    broker.config = type(broker.config)(**{**broker.config.__dict__, "grace_s": 0.3})
    browser = visitor()
    session = await start(browser)
    await running(broker, session["id"])
    assert await broker.keeper.wait_ended(session_id=session["id"], timeout_s=10)
    ended = (await browser.get(f"/api/sessions/{session['id']}")).json()
    assert ended["ended_reason"] == "visitor"
    assert "closed" in ended["detail"]
    assert not (portal_dirs / "run" / session["id"]).exists()
    await asyncio.sleep(0)
