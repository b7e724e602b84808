"""The disk box on a real FreeDOS: disks changed in B: while the machine runs.

The test guest boots from A:, so the swaps happen in B:, with test disks of their
own volume labels (tests/support/disk_set.py). What DOS sees is read from its own
screen; the CD (no test guest has a CD driver) from QEMU's query-block.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from portal.importer import sha256_path
from portal.models import Exhibit
from sessions.machines.prepare import StartCondition
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, visitor
from tests.support.disk_set import disk_set_add
from tests.support.guest import disk_file, wait_for_screen, wait_for_text
from tests.support.rfb import RfbClient

pytestmark = pytest.mark.django_db(transaction=True)

AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)


class Visit:
    def __init__(self, broker: Any, browser: AsyncClient, session: dict[str, Any], rfb: RfbClient) -> None:
        self.broker, self.browser, self.rfb = broker, browser, rfb
        self.id = session["id"]

    @property
    def machine(self) -> Any:
        return self.broker.machine(self.id)

    async def command(self, line: str, *, expect: str) -> str:
        await self.machine_clear()
        await self.rfb.type_text(line + "\n")
        return await wait_for_text(self.machine, self.rfb, expect, timeout_s=30)

    async def machine_clear(self) -> None:
        await self.rfb.type_text("cls\n")
        await wait_for_screen(self.machine, self.rfb, lambda text: text.strip() == "A:\\>",
                              timeout_s=30, what="a cleared screen")

    async def b_shows(self, needle: str, *, fresh: bool = False) -> str:
        """`dir B:` until DOS lists the disk now in B:. A drive without a change line:
        DOS takes a disk read within the last two seconds for the same disk, as it did
        on real PCs, so B: is left alone that long first (a guest's rule of time, not a
        condition anything could await)."""
        screen = ""
        for attempt in range(3):
            if attempt or not fresh:
                await asyncio.sleep(2.5)
            screen = await self.command("dir B:", expect="A:\\>dir B:")
            screen = await wait_for_screen(self.machine, self.rfb,
                                           lambda text: text.rstrip().endswith("A:\\>")
                                           and text.count("A:\\>") >= 2, timeout_s=30,
                                           what="the prompt after dir")
            if needle in screen:
                return screen
        raise AssertionError(f"dir B: never showed {needle!r}; it showed:\n{screen}")

    async def fail_all(self) -> None:
        """Answer DOS's "Abort, Ignore, Retry, Fail?" with Fail until the prompt is back."""
        for _ in range(10):
            screen = await wait_for_screen(
                self.machine, self.rfb, lambda text: text.rstrip().endswith(("(F)ail?", "A:\\>")),
                timeout_s=30, what="a question or the prompt")
            if screen.rstrip().endswith("A:\\>"):
                await self.machine_clear()
                return
            await self.rfb.type_text("f")
            await wait_for_screen(self.machine, self.rfb, screen.__ne__, timeout_s=30, what="DOS's answer")
        raise AssertionError("DOS kept asking")

    async def put(self, drive: str, disk: Any) -> Any:
        return await self.browser.put(f"/api/sessions/{self.id}/drives/{drive}", {"disk": disk},
                                      content_type="application/json")

    async def drives(self) -> dict[str, Any]:
        response = await self.browser.get(f"/api/sessions/{self.id}/drives")
        assert response.status_code == 200, response.content
        return {entry["drive"]: entry["disk"] for entry in response.json()["drives"]}


async def test_it_changes_disks_in_b_as_dos_sees_them_and_keeps_each_disks_writes(
    broker: Any, exhibit_create: ExhibitFactory, tmp_path: Path
) -> None:
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    disks = await disk_set_add(exhibit, tmp_path)
    exhibit = await Exhibit.objects.select_related("image").aget(pk=exhibit.pk)
    await exhibit_prepare(exhibit, AT_PROMPT)
    other = await exhibit_create(FREEDOS_GAMES, slug="other", accelerator="tcg", published=False)
    (tmp_path / "other").mkdir()
    foreign = await disk_set_add(other, tmp_path / "other")
    masters = {key: (Path(disk.image.path), disk.image.sha256) for key, disk in disks.items()}
    one, two, locked, cd = (disks[key].pk for key in ("one", "two", "locked", "cd"))

    browser = visitor()
    response = await browser.post("/api/exhibits/games/sessions")
    assert response.status_code == 201
    session = response.json()
    visit = Visit(broker, browser, session, await display_watch(browser, session["vnc_path"]))
    try:
        await wait_for_text(visit.machine, visit.rfb, "A:\\>", timeout_s=60)
        listed = (await browser.get(f"/api/sessions/{visit.id}/drives")).json()
        assert listed["drives"] == [{"drive": "b", "disk": one}, {"drive": "cd", "disk": None}]
        assert [disk["id"] for disk in listed["disks"]] == [one, two, locked, cd, "visitor-0"]
        assert listed["disks"][0] == {"id": one, "label": "Disk 1 — Setup", "media": "floppy",
                                      "drive": "b", "write_protected": False}

        # Disk 1 is in B: from the start.
        screen = await visit.b_shows("DISK1", fresh=True)  # DOS has not read B: yet
        assert "ONE" in screen

        # Disk 2 goes in: DOS notices.
        response = await visit.put("b", two)
        assert response.status_code == 200, response.content
        assert {"drive": "b", "disk": two} in response.json()["drives"]
        screen = await visit.b_shows("DISK2")
        assert "TWO" in screen
        assert "ONE" not in screen

        # What the visit writes to Disk 2 is there when Disk 2 comes back.
        await visit.command("echo saved> B:\\SAVE.TXT", expect="A:\\>echo saved> B:\\SAVE.TXT")
        row = await VisitorSession.objects.aget(id=visit.id)
        layer = Path(row.run_dir) / f"disk-{two}.qcow2"
        for _ in range(60):
            if await disk_file(visit.machine, layer, "SAVE.TXT") == b"saved\r\n":
                break
            await wait_for_text(visit.machine, visit.rfb, "A:\\>", timeout_s=5)
        assert await disk_file(visit.machine, layer, "SAVE.TXT") == b"saved\r\n"
        assert (await visit.put("b", one)).status_code == 200
        screen = await visit.b_shows("DISK1")
        assert "SAVE" not in screen
        assert (await visit.put("b", two)).status_code == 200
        await visit.b_shows("DISK2")
        await visit.command("type B:\\SAVE.TXT", expect="B:\\SAVE.TXT\nsaved")

        # A checkpoint with Disk 2 in B: comes back with Disk 2 in B:.
        saved = await browser.post(f"/api/sessions/{visit.id}/checkpoints")
        assert saved.status_code == 201, saved.content
        assert (await visit.put("b", one)).status_code == 200
        assert (await visit.drives())["b"] == one
        restored = await browser.post(f"/api/sessions/{visit.id}/checkpoints/{saved.json()['id']}/restore")
        assert restored.status_code == 200, restored.content
        assert (await visit.drives())["b"] == two
        await visit.b_shows("DISK2")

        # A write-protected disk: DOS is refused as with the tab.
        assert (await visit.put("b", locked)).status_code == 200
        await visit.b_shows("DISK3")
        await visit.rfb.type_text("echo no> B:\\NO.TXT\n")
        screen = await wait_for_text(visit.machine, visit.rfb, "(F)ail?", timeout_s=30)
        assert "Error writing to drive B: DOS area: write-protection violation" in screen, screen
        await visit.fail_all()

        # Out: DOS finds no disk.
        response = await visit.put("b", None)
        assert response.status_code == 200
        assert {"drive": "b", "disk": None} in response.json()["drives"]
        await asyncio.sleep(2.5)  # DOS's two seconds, as above
        await visit.rfb.type_text("dir B:\n")
        screen = await wait_for_text(visit.machine, visit.rfb, "(F)ail?", timeout_s=30)
        assert "Error reading from drive B" in screen, screen
        assert "Volume in drive B" not in screen
        await visit.fail_all()

        # The CD drive, seen by QEMU: in, then out.
        assert (await visit.put("cd", cd)).status_code == 200
        block = {device["device"]: device for device in await visit.machine.block_devices()}
        cd_drive = next(device for name, device in block.items() if "-cd" in name)
        assert cd_drive["inserted"]["node-name"] == f"disk-{cd}"
        assert cd_drive["inserted"]["ro"] is True
        assert (await visit.put("cd", None)).status_code == 200
        block = {device["device"]: device for device in await visit.machine.block_devices()}
        assert "inserted" not in next(device for name, device in block.items() if "-cd" in name)

        # The visitor's own files disk is a disk of the box: it can go out and back in.
        brought = await browser.post(f"/api/sessions/{visit.id}/media",
                                     {"files": [SimpleUploadedFile("note.txt", b"note\r\n")]})
        assert brought.status_code == 201, brought.content
        listed = (await browser.get(f"/api/sessions/{visit.id}/drives")).json()
        assert {"drive": "b", "disk": "visitor-1"} in listed["drives"]
        assert {"id": "visitor-1", "label": "Your files", "media": "floppy", "drive": "b",
                "write_protected": False} in listed["disks"]
        assert (await visit.put("b", two)).status_code == 200
        assert (await visit.put("b", "visitor-1")).status_code == 200
        await visit.b_shows("VISITOR1")
        # A watcher learns what is in each drive from the watch link's state.
        link = (await browser.post(f"/api/sessions/{visit.id}/watchers")).json()
        state = (await visitor().get(f"/watch/{link['token']}/state")).json()
        assert state["drives"] == [{"drive": "b", "disk": "visitor-1", "label": "Your files"},
                                   {"drive": "cd", "disk": None, "label": None}]

        # Refused: a drive the machine lacks, a CD in a floppy drive, another exhibit's
        # disk, something that is not a disk, and changes faster than a person makes.
        unknown = await visit.put("z", one)
        assert unknown.status_code == 404
        assert unknown.json()["error"] == "not_found"
        misfit = await visit.put("b", cd)
        assert misfit.status_code == 400
        assert misfit.json()["error"] == "disk_does_not_fit"
        stranger = await visit.put("b", foreign["one"].pk)
        assert stranger.status_code == 404
        assert (await visit.put("b", {"id": 1})).status_code == 404
        assert (await browser.put(f"/api/sessions/{visit.id}/drives/b", "[]",
                                  content_type="application/json")).status_code == 400
        answers = [(await visit.put("b", two if n % 2 else one)).status_code for n in range(50)]
        assert 429 in answers
        assert answers[:5] == [200] * 5
        assert (await visitor().get(f"/api/sessions/{visit.id}/drives")).status_code == 404

        # Reset starts again from the disk set as the curators arranged it.
        await asyncio.sleep(1.1)  # past the second the burst above was counted in
        assert (await visit.put("b", two)).status_code == 200
        reset = await browser.post(f"/api/sessions/{visit.id}/reset")
        assert reset.status_code == 200, reset.content
        assert (await visit.drives()) == {"b": one, "cd": None}
    finally:
        await visit.rfb.close()
        await browser.delete(f"/api/sessions/{visit.id}")
    # Every layer went with the visit; no master was written.
    row = await VisitorSession.objects.aget(id=visit.id)
    assert row.run_dir
    assert not Path(row.run_dir).exists()
    for path, digest in masters.values():
        assert sha256_path(path) == digest
