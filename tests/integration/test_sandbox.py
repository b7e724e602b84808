"""The visitor's sandbox on a real FreeDOS: checkpoints, files in, files out.

Each test drives a FreeDOS prompt over the display as a visitor does and reads
the result from the guest's own screen (its text memory) and disks (mtools).
"""
from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import AsyncClient

from portal.models import Exhibit
from sessions.machines.prepare import StartCondition
from sessions.machines.sandbox import SandboxError, fat_extract, floppy_build
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, visitor
from tests.support.guest import disk_file, sha256_file, wait_for_screen, wait_for_text
from tests.support.rfb import RfbClient
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)

AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)


class Visit:
    def __init__(self, broker: Any, browser: AsyncClient, session: dict[str, Any], rfb: RfbClient) -> None:
        self.broker, self.browser, self.session, self.rfb = broker, browser, session, rfb
        self.id = session["id"]

    @property
    def machine(self) -> Any:
        return self.broker.machine(self.id)

    async def command(self, line: str, *, expect: str) -> str:
        await self.rfb.type_text(line + "\n")
        return await wait_for_text(self.machine, self.rfb, expect, timeout_s=30)

    async def text_memory(self) -> str:
        """The whole 80x25 text screen with its colours, as the guest's video memory holds it."""
        output = await self.machine.execute("human-monitor-command",
                                            {"command-line": "xp /2000hx 0xb8000"})
        return " ".join(re.findall(r"0x[0-9a-f]{4}\b", str(output)))

    async def overlay_file(self, name: str) -> bytes | None:
        row = await VisitorSession.objects.aget(id=self.id)
        return await disk_file(self.machine, Path(row.run_dir) / "disk.qcow2", name)

    async def on_disk(self, name: str, content: bytes) -> None:
        """Wait until DOS has written the file to its floppy (it finishes a moment after
        the prompt is back)."""
        async def written() -> bool:
            return await self.overlay_file(name) == content
        await eventually(written, timeout_s=30, interval_s=0.5)

    async def close(self) -> None:
        await self.rfb.close()
        await self.browser.delete(f"/api/sessions/{self.id}")


async def visit(broker: Any) -> Visit:
    browser = visitor()
    response = await browser.post("/api/exhibits/games/sessions")
    assert response.status_code == 201
    session = response.json()
    return Visit(broker, browser, session, await display_watch(browser, session["vnc_path"]))


@pytest.fixture
async def games(broker: Any, exhibit_create: ExhibitFactory) -> Any:
    # A floppy exhibit in software emulation (floppy boot fails under nested KVM);
    # visitors' files go into B: (the first free drive).
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, AT_PROMPT)
    return exhibit


async def test_it_restores_a_checkpoint_to_the_exact_screen_and_forgets_later_files(
    broker: Any, games: Any
) -> None:
    broker.config = dataclasses.replace(broker.config, checkpoints_per_visit=2)
    one = await visit(broker)
    try:
        await one.command("echo before > before.txt", expect="A:\\>echo before > before.txt")
        await one.command("dir /w", expect="bytes free")
        await wait_for_screen(one.machine, one.rfb,
                              lambda text: text.rstrip().endswith("bytes free\n\nA:\\>"),
                              timeout_s=30, what="the prompt after dir")
        screen = await one.text_memory()
        response = await one.browser.post(f"/api/sessions/{one.id}/checkpoints",
                                          {"label": "before the change"}, content_type="application/json")
        assert response.status_code == 201, response.content
        checkpoint = response.json()
        assert checkpoint["label"] == "before the change"
        assert checkpoint["id"]
        assert checkpoint["created_at"]
        # The visit goes on: the guest writes more, and the screen changes.
        await one.command("echo after > after.txt", expect="A:\\>echo after > after.txt")
        await one.command("cls", expect="A:\\>")
        await one.on_disk("AFTER.TXT", b"after \r\n")
        assert await one.text_memory() != screen
        pid = one.machine.pid

        response = await one.browser.post(f"/api/sessions/{one.id}/checkpoints/{checkpoint['id']}/restore")
        assert response.status_code == 200, response.content
        assert response.json()["state"] == "running"
        # The same QEMU, the same display connection, exactly the screen of that moment.
        assert one.machine.pid == pid
        assert await one.text_memory() == screen
        assert one.rfb.transport.close_code is None  # type: ignore[attr-defined]
        await one.command("cls", expect="A:\\>")
        await one.command("dir after.txt", expect="File not found")
        await one.command("type before.txt", expect="type before.txt\nbefore")
        assert await one.overlay_file("AFTER.TXT") is None

        listed = (await one.browser.get(f"/api/sessions/{one.id}/checkpoints")).json()
        assert listed == {"checkpoints": [checkpoint]}
        second = await one.browser.post(f"/api/sessions/{one.id}/checkpoints")
        assert second.status_code == 201
        assert second.json()["label"] == "Checkpoint 2"
        third = await one.browser.post(f"/api/sessions/{one.id}/checkpoints")
        assert third.status_code == 409
        assert third.json()["error"] == "checkpoint_limit"
        deleted = await one.browser.delete(f"/api/sessions/{one.id}/checkpoints/{checkpoint['id']}")
        assert deleted.status_code == 204
        assert [c["id"] for c in (await one.browser.get(f"/api/sessions/{one.id}/checkpoints"))
                .json()["checkpoints"]] == [second.json()["id"]]
        gone = await one.browser.post(f"/api/sessions/{one.id}/checkpoints/{checkpoint['id']}/restore")
        assert gone.status_code == 404

        stranger = visitor()
        await stranger.get("/api/exhibits")
        assert (await stranger.get(f"/api/sessions/{one.id}/checkpoints")).status_code == 404
        assert (await stranger.post(f"/api/sessions/{one.id}/checkpoints")).status_code == 404
    finally:
        await one.close()
    # The master was never written (and the run directory, with every checkpoint, is gone:
    # the fixture checks).
    assert sha256_file(Path(games.image.path)) == games.image.sha256


async def test_it_brings_a_visitors_files_in_on_a_floppy_the_prompt_reads(broker: Any, games: Any) -> None:
    one = await visit(broker)
    try:
        saved = await one.browser.post(f"/api/sessions/{one.id}/checkpoints")
        assert saved.status_code == 201
        response = await one.browser.post(f"/api/sessions/{one.id}/media", {"files": [
            SimpleUploadedFile("hello.txt", b"Hello from the visitor\r\n"),
            SimpleUploadedFile("My long notes.text", b"notes\r\n"),
        ]})
        assert response.status_code == 201, response.content
        assert response.json() == {"drive": "b", "files": [
            {"name": "hello.txt", "dos_name": "HELLO.TXT", "bytes": 24},
            {"name": "My long notes.text", "dos_name": "MYLONGNO.TEX", "bytes": 7},
        ]}
        await one.command("type B:\\HELLO.TXT", expect="Hello from the visitor")
        await one.command("type B:\\MYLONGNO.TEX", expect="B:\\MYLONGNO.TEX\nnotes")

        # A second disk replaces the first in the drive.
        again = await one.browser.post(f"/api/sessions/{one.id}/media",
                                       {"files": [SimpleUploadedFile("second.txt", b"two\r\n")]})
        assert again.status_code == 201
        # A drive without a change line: DOS takes a disk read within the last two
        # seconds for the same disk, as it did on real PCs.
        await asyncio.sleep(2.5)
        await one.command("type B:\\SECOND.TXT", expect="B:\\SECOND.TXT\ntwo")
        await one.command("dir B:\\HELLO.TXT", expect="File not found")

        # Going back to a checkpoint from before puts back the disk the drive held then.
        restored = await one.browser.post(f"/api/sessions/{one.id}/checkpoints/{saved.json()['id']}/restore")
        assert restored.status_code == 200
        await asyncio.sleep(2.5)
        await one.command("dir B:", expect="Volume in drive B is BLANK")

        none = await one.browser.post(f"/api/sessions/{one.id}/media", {})
        assert none.status_code == 400
        assert none.json()["error"] == "no_files"
        too_big = await one.browser.post(f"/api/sessions/{one.id}/media", {"files": [
            SimpleUploadedFile("big.bin", bytes(1500 * 1024))]})
        assert too_big.status_code == 413
        assert too_big.json()["error"] == "media_too_large"
        await Exhibit.objects.filter(pk=games.pk).aupdate(files_in="off")
        off = await one.browser.post(f"/api/sessions/{one.id}/media",
                                     {"files": [SimpleUploadedFile("x.txt", b"x")]})
        assert off.status_code == 409
        assert off.json()["error"] == "media_off"
    finally:
        await one.close()


async def test_it_gives_back_the_files_written_at_the_prompt_in_a_zip(broker: Any, games: Any) -> None:
    one = await visit(broker)
    try:
        empty = await one.browser.get(f"/api/sessions/{one.id}/files.zip")
        assert empty.status_code == 200
        assert empty["Content-Type"] == "application/zip"
        content = b"".join(empty.streaming_content)  # type: ignore[attr-defined]
        assert zipfile.ZipFile(io.BytesIO(content)).namelist() == []

        await one.command("echo kept safe > kept.txt", expect="A:\\>echo kept safe > kept.txt")
        await one.command("md work", expect="A:\\>md work")
        await one.command("echo deep > work\\deep.txt", expect="A:\\>echo deep > work\\deep.txt")
        brought = await one.browser.post(f"/api/sessions/{one.id}/media",
                                         {"files": [SimpleUploadedFile("in.txt", b"in\r\n")]})
        assert brought.status_code == 201
        await one.command("echo on b > b:\\new.txt", expect="A:\\>echo on b > b:\\new.txt")

        expected = {"A/KEPT.TXT": b"kept safe \r\n", "A/WORK/DEEP.TXT": b"deep \r\n",
                    "B-disk1/NEW.TXT": b"on b \r\n"}
        archive: zipfile.ZipFile | None = None

        async def all_written() -> bool:
            # DOS finishes writing a moment after its prompt is back.
            nonlocal archive
            response = await one.browser.get(f"/api/sessions/{one.id}/files.zip")
            assert response.status_code == 200
            assert "attachment" in response["Content-Disposition"]
            content = b"".join(response.streaming_content)  # type: ignore[attr-defined]
            archive = zipfile.ZipFile(io.BytesIO(content))
            return {name: archive.read(name) for name in archive.namelist()} == expected

        await eventually(all_written, timeout_s=30, interval_s=0.5)
        # Only what the visit wrote: not the master's files, not the file the visitor brought.
        assert archive is not None
        assert sorted(archive.namelist()) == sorted(expected)
        assert archive.getinfo("A/KEPT.TXT").date_time[0] >= 2024
        # The visit runs on.
        await one.command("type kept.txt", expect="type kept.txt\nkept safe")

        stranger = visitor()
        await stranger.get("/api/exhibits")
        assert (await stranger.get(f"/api/sessions/{one.id}/files.zip")).status_code == 404
    finally:
        await one.close()


async def test_it_refuses_the_sandbox_for_a_session_that_has_ended(broker: Any, games: Any) -> None:
    one = await visit(broker)
    await one.close()
    await asyncio.sleep(0)
    response = await one.browser.post(f"/api/sessions/{one.id}/checkpoints")
    assert response.status_code == 409
    assert response.json()["error"] == "session_ended"


def test_it_reads_back_the_files_of_a_floppy_it_built(tmp_path: Path) -> None:
    source = tmp_path / "in.txt"
    source.write_bytes(b"in\r\n")
    image = tmp_path / "floppy.img"
    floppy_build(image, [(source, "HELLO.TXT"), (source, "NOTES~1.TXT")])
    files = fat_extract(image, tmp_path / "out", floppy=True, timeout_s=30)
    assert set(files) == {"HELLO.TXT", "NOTES~1.TXT"}
    assert files["HELLO.TXT"][0] == 4


def test_it_refuses_a_file_system_whose_directory_holds_itself(tmp_path: Path) -> None:
    """A guest may write anything on its disk: a directory that is its own child would
    have mtools copy for ever."""
    import subprocess

    image = tmp_path / "loop.img"
    for command in (["mformat", "-i", str(image), "-C", "-f", "1440", "::"],
                    ["mmd", "-i", str(image), "::A"], ["mmd", "-i", str(image), "::A/B"]):
        subprocess.run(command, check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    data = bytearray(image.read_bytes())
    root = 19 * 512  # 1.44 MB FAT12: boot sector, two 9-sector FATs, then the root directory
    entry = next(root + i for i in range(0, 224 * 32, 32) if data[root + i:root + i + 11] == b"A" + b" " * 10)
    cluster = int.from_bytes(data[entry + 26:entry + 28], "little")
    directory = (33 + cluster - 2) * 512
    child = next(directory + i for i in range(0, 512, 32)
                 if data[directory + i:directory + i + 11] == b"B" + b" " * 10)
    data[child + 26:child + 28] = cluster.to_bytes(2, "little")  # A\B is A again
    image.write_bytes(bytes(data))
    with pytest.raises(SandboxError, match="damaged"):
        fat_extract(image, tmp_path / "out", floppy=True, timeout_s=30)
