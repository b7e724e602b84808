"""A saved visit carries the disk box whole, on a real FreeDOS: each disk's layer and
which disk is in which drive come back on the resumed machine, exactly as they were.

The test guest boots from A:, so the disks change in B: (tests/support/disk_set.py);
what DOS sees is read from its own screen, the CD drive from QEMU's query-block.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from portal.importer import sha256_path
from portal.models import Exhibit
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, visitor
from tests.integration.test_drives import AT_PROMPT, Visit
from tests.support.disk_set import disk_set_add
from tests.support.guest import disk_file, wait_for_text

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_resumes_a_saved_visit_with_each_disk_in_its_drive_and_each_disks_writes(
    broker: Any, exhibit_create: ExhibitFactory, tmp_path: Path
) -> None:
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    disks = await disk_set_add(exhibit, tmp_path)
    exhibit = await Exhibit.objects.select_related("image").aget(pk=exhibit.pk)
    await exhibit_prepare(exhibit, AT_PROMPT)
    masters = [(Path(disk.image.path), disk.image.sha256) for disk in disks.values()]
    one, two, cd = (disks[key].pk for key in ("one", "two", "cd"))

    browser = visitor()
    session = (await browser.post("/api/exhibits/games/sessions")).json()
    visit = Visit(broker, browser, session, await display_watch(browser, session["vnc_path"]))
    try:
        await wait_for_text(visit.machine, visit.rfb, "A:\\>", timeout_s=60)
        # Disk 2 in B:, a file written on it, the visitor's files brought in, then Disk 1
        # back in B: and the CD in its drive.
        assert (await visit.put("b", two)).status_code == 200
        await visit.b_shows("DISK2")
        await visit.command("echo kept> B:\\KEPT.TXT", expect="A:\\>echo kept> B:\\KEPT.TXT")
        row = await VisitorSession.objects.aget(id=visit.id)
        layer = Path(row.run_dir) / f"disk-{two}.qcow2"
        for _ in range(60):
            if await disk_file(visit.machine, layer, "KEPT.TXT") == b"kept\r\n":
                break
            await wait_for_text(visit.machine, visit.rfb, "A:\\>", timeout_s=5)
        assert await disk_file(visit.machine, layer, "KEPT.TXT") == b"kept\r\n"
        # The visitor's own floppy goes into B: too (a disk of the box), and out again.
        brought = await browser.post(f"/api/sessions/{visit.id}/media",
                                     {"files": [SimpleUploadedFile("note.txt", b"brought\r\n")]})
        assert brought.status_code == 201, brought.content
        assert (await visit.put("b", one)).status_code == 200
        assert (await visit.put("cd", cd)).status_code == 200
        assert await visit.drives() == {"b": one, "cd": cd}

        download: Any = await browser.post(f"/api/sessions/{visit.id}/save")
        assert download.status_code == 200, download.content
        body = b"".join([chunk async for chunk in download.streaming_content])
    finally:
        await visit.rfb.close()
        await browser.delete(f"/api/sessions/{visit.id}")

    upload = SimpleUploadedFile("games.visit", body, content_type="application/octet-stream")
    response = await browser.post("/api/exhibits/games/sessions", {"visit": upload})
    assert response.status_code == 201, response.content
    resumed = response.json()
    visit = Visit(broker, browser, resumed, await display_watch(browser, resumed["vnc_path"]))
    try:
        # The drives answer what they answered at save time, not the disks the set starts with.
        assert await visit.drives() == {"b": one, "cd": cd}
        block = {device["device"]: device for device in await visit.machine.block_devices()}
        assert block["floppy1"]["inserted"]["node-name"] == f"disk-{one}"
        assert next(device for name, device in block.items()
                    if "-cd" in name)["inserted"]["node-name"] == f"disk-{cd}"
        # Disk 2 was out of its drive when saved; back in, it has what the visit wrote.
        assert (await visit.put("b", two)).status_code == 200
        screen = await visit.b_shows("KEPT")
        assert "DISK2" in screen
        await visit.command("type B:\\KEPT.TXT", expect="B:\\KEPT.TXT\nkept")
        assert (await visit.put("b", "visitor-1")).status_code == 200
        await visit.b_shows("VISITOR1")
        await visit.command("type B:\\NOTE.TXT", expect="B:\\NOTE.TXT\nbrought")
    finally:
        await visit.rfb.close()
        await browser.delete(f"/api/sessions/{visit.id}")
    for path, digest in masters:
        assert sha256_path(path) == digest
    # Nothing of either visit is left: the portal_dirs fixture checks the run directory.
    row = await VisitorSession.objects.aget(id=resumed["id"])
    assert row.run_dir
    assert not Path(row.run_dir).exists()
