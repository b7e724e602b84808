"""Every visitor action on a machine from the warm pool, through the served portal.

A default install keeps a warm pool, so nearly every visitor's machine was made
before they pressed Start and handed over to their visit. Each route a visit
has is used here on such a machine, over real HTTP and WebSockets against
Daphne: the machine must be found like one launched for the visit (its disks
for files out and the sandbox, its sockets, its QEMU for screenshots, keys,
checkpoints and the curators' save-master), and a reset takes a pooled machine
again.
"""
from __future__ import annotations

import asyncio
import io
import json
import re
import struct
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.wait import wait_until

SLUG = "dos"
TIMEOUT_S = 60


@pytest.fixture
def portal(portal_make: PortalFactory) -> Portal:
    """A portal with its defaults (the warm pool on) serving a FreeDOS exhibit whose
    start state is its A:\\> prompt, published while the portal runs, as a curator does."""
    site = portal_make(demo=False)
    # Software emulation: a floppy does not boot under nested KVM.
    # Added and prepared in one Python, as each command alone would.
    site.manage_each(
        ["add_exhibit", str(FREEDOS_GAMES), "--slug", SLUG, "--title", "FreeDOS", "--boot", "floppy",
         "--year", "1994", "--accelerator", "tcg", "--publish"],
        ["prepare_exhibit", SLUG, "--wait-text", "A:\\>", "--still", "1"])
    return site


def health(site: Portal) -> dict[str, Any]:
    with urllib.request.urlopen(site.url + "/healthz", timeout=10) as response:
        return dict(json.load(response))


def pooled_starts(site: Portal) -> float:
    """Machines this node took from its warm pool for visits (starts and resets)."""
    with urllib.request.urlopen(site.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        if family.name == "portal_machine_starts":
            return sum(sample.value for sample in family.samples
                       if sample.name.endswith("_total") and sample.labels.get("start") == "pooled")
    return 0.0


def pool_full(site: Portal) -> Callable[[], bool]:
    size = health(site)["pool"]["size"]
    return lambda: health(site)["pool"]["exhibits"].get(SLUG, 0) == size


def files_out(visitor: PortalVisitor, session_id: str) -> dict[str, bytes]:
    status, body = visitor.request("GET", f"/api/sessions/{session_id}/files.zip")
    assert status == 200, body
    archive = zipfile.ZipFile(io.BytesIO(body))
    return {name: archive.read(name) for name in archive.namelist()}


def typed(visitor: PortalVisitor, session_id: str, text: str) -> None:
    status, body = visitor.request("POST", f"/api/sessions/{session_id}/keys", {"text": text})
    assert status == 204, body


def upload(visitor: PortalVisitor, session_id: str, name: str, content: bytes) -> tuple[int, Any]:
    """POST the file as the page's drop zone does (multipart, field `files`)."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
        f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(visitor.base_url + f"/api/sessions/{session_id}/media", data=body,
                                     method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    request.add_header("X-CSRFToken", visitor.cookie("csrftoken") or "")
    try:
        with visitor.opener.open(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def staff_log_in(site: Portal, visitor: PortalVisitor) -> None:
    """Sign this browser in to the admin as a member of staff, through its login form."""
    site.manage("shell", "-c", "from django.contrib.auth.models import User; "
                "User.objects.create_superuser('curator', 'c@portal.invalid', 'pooled-visit-pw')")
    visitor.request("GET", "/admin/login/")
    form = urllib.parse.urlencode({"username": "curator", "password": "pooled-visit-pw",
                                   "csrfmiddlewaretoken": visitor.cookie("csrftoken") or "",
                                   "next": "/admin/"}).encode()
    request = urllib.request.Request(site.url + "/admin/login/", data=form, method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with visitor.opener.open(request, timeout=30) as response:
        assert response.url.endswith("/admin/"), "the curator was not signed in"


def test_every_visitor_action_works_on_a_machine_from_the_warm_pool(portal: Portal) -> None:
    wait_until(pool_full(portal), timeout_s=TIMEOUT_S, what="the pool to fill")
    waiting = set(health(portal)["pool"]["exhibits"])
    assert waiting == {SLUG}
    before = pooled_starts(portal)

    visitor = PortalVisitor(portal.url)
    staff_log_in(portal, visitor)
    session = visitor.session_start(SLUG, timeout_s=TIMEOUT_S)
    session_id = session["id"]
    assert pooled_starts(portal) == before + 1, "the visit's machine was not the pool's"

    # Its QEMU names the visit's run directory, which names neither the pool nor anything
    # but the machine; every file of the visit is there.
    status, shown = visitor.request("GET", f"/api/sessions/{session_id}")
    assert status == 200
    assert shown["state"] == "running"
    run_dirs = [Path(arg.partition("unix:")[2].partition(",")[0]).parent
                for process in psutil.process_iter(["cmdline"])
                for arg in (process.info["cmdline"] or []) if arg.startswith("unix:")
                and str(portal.run_dir) in arg]
    assert run_dirs
    for run_dir in run_dirs:
        assert re.fullmatch(r"m-[0-9a-f]{16}", run_dir.name), run_dir

    # The display and the page's events, over the served WebSockets.
    async def sockets() -> None:
        rfb = await visitor.display(session["vnc_path"])
        try:
            assert (rfb.width, rfb.height) == (720, 400)
        finally:
            await rfb.close()
        events = await visitor.websocket(session["events_path"])
        try:
            first = json.loads(await asyncio.wait_for(events.receive_text(), timeout=30))
            assert first["type"] == "state"
            assert first["state"] == "running"
        finally:
            await events.close()
    asyncio.run(sockets())

    # Keys: the guest writes a file on its own disk; files out finds it.
    typed(visitor, session_id, "echo pooled visit> POOLED.TXT\n")
    wait_until(lambda: "A/POOLED.TXT" in files_out(visitor, session_id), timeout_s=TIMEOUT_S,
                    what="the guest's file in files.zip")
    assert files_out(visitor, session_id)["A/POOLED.TXT"].strip() == b"pooled visit"
    status, body = visitor.request("POST", f"/api/sessions/{session_id}/keys", {"combo": "ctrl-c"})
    assert status == 204, body

    # Files in: a floppy in B:, copied by the guest to A:, and out again.
    status, body = upload(visitor, session_id, "my notes.txt", b"brought in\r\n")
    assert status == 201, body
    assert body["drive"] == "b"
    assert body["files"][0]["dos_name"] == "MYNOTES.TXT"
    typed(visitor, session_id, "copy B:MYNOTES.TXT A:NOTES.TXT\n")
    wait_until(lambda: "A/NOTES.TXT" in files_out(visitor, session_id), timeout_s=TIMEOUT_S,
                    what="the copied file in files.zip")
    assert files_out(visitor, session_id)["A/NOTES.TXT"] == b"brought in\r\n"

    # A screenshot of the guest's screen, from QEMU.
    status, png = visitor.request("GET", f"/api/sessions/{session_id}/screenshot.png")
    assert status == 200
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (720, 400)

    # Checkpoints: save, list, go back (the file written after it is gone), delete.
    status, checkpoint = visitor.request("POST", f"/api/sessions/{session_id}/checkpoints",
                                         {"label": "before"})
    assert status == 201, checkpoint
    typed(visitor, session_id, "echo later> LATER.TXT\n")
    wait_until(lambda: "A/LATER.TXT" in files_out(visitor, session_id), timeout_s=TIMEOUT_S,
                    what="a file written after the checkpoint")
    status, listed = visitor.request("GET", f"/api/sessions/{session_id}/checkpoints")
    assert status == 200
    assert [item["id"] for item in listed["checkpoints"]] == [checkpoint["id"]]
    status, body = visitor.request(
        "POST", f"/api/sessions/{session_id}/checkpoints/{checkpoint['id']}/restore")
    assert status == 200, body
    assert "A/LATER.TXT" not in files_out(visitor, session_id)
    status, _ = visitor.request("DELETE", f"/api/sessions/{session_id}/checkpoints/{checkpoint['id']}")
    assert status == 204

    # Watching together: a link, its page and state, the keyboard handed over and
    # taken back, every link revoked.
    status, watch = visitor.request("POST", f"/api/sessions/{session_id}/watchers")
    assert status == 201, watch
    watcher = PortalVisitor(portal.url)
    status, _ = watcher.request("GET", watch["watch_url"])
    assert status == 200
    status, state = watcher.request("GET", watch["watch_url"] + "state")
    assert status == 200, state
    status, body = visitor.request("POST", f"/api/sessions/{session_id}/watchers/control",
                                   {"watcher": "nobody-by-this-name"})
    assert status == 404, body
    status, _ = visitor.request("DELETE", f"/api/sessions/{session_id}/watchers/control")
    assert status == 204
    status, _ = visitor.request("DELETE", f"/api/sessions/{session_id}/watchers")
    assert status == 204

    # A curator saves the visit's disk as a new master: the pooled machine's overlay.
    status, saved = visitor.request("POST", f"/api/sessions/{session_id}/save-master",
                                    {"slug": "dos-pooled", "title": "FreeDOS, saved"})
    assert status == 201, saved
    assert saved["exhibit"]["parent"] == SLUG

    # Reset: a pooled machine again, on a fresh disk, found the same way.
    wait_until(pool_full(portal), timeout_s=TIMEOUT_S, what="the pool to fill again")
    status, body = visitor.request("POST", f"/api/sessions/{session_id}/reset")
    assert status == 200, body
    assert pooled_starts(portal) == before + 2, "the reset's machine was not the pool's"
    assert files_out(visitor, session_id) == {}
    typed(visitor, session_id, "echo after reset> AFTER.TXT\n")
    wait_until(lambda: "A/AFTER.TXT" in files_out(visitor, session_id), timeout_s=TIMEOUT_S,
                    what="a file written after the reset")

    assert visitor.session_end(session_id) == 204
    status, ended = visitor.request("GET", f"/api/sessions/{session_id}")
    assert ended["state"] == "ended"
    assert ended["ended_reason"] == "visitor"
