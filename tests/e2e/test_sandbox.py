"""The sandbox on the machine page, in Chromium: Save checkpoint, the list, Go back,
the drop zone with its DOS names, Take my files."""
from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Portal


def test_it_gives_a_visitor_checkpoints_a_drop_zone_and_their_files(
    portal: Portal, browser: Any, tmp_path: Path
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)

    page.get_by_role("button", name="Save checkpoint").click()
    status = page.locator("#checkpoint-status")
    status.filter(has_text="Saved").wait_for(timeout=30_000)
    items = page.locator("#checkpoint-list li")
    assert items.count() == 1
    assert "Checkpoint 1" in items.first.inner_text()
    items.first.get_by_role("button", name="Go back").click()
    status.filter(has_text="Back at").wait_for(timeout=30_000)
    assert page.locator("#state").get_attribute("data-state") == "running"

    # The demo boots from its hard disk: visitors' files go into A:.
    note = tmp_path / "my notes.txt"
    note.write_text("hello\r\n")
    page.locator("#file-input").set_input_files(str(note))
    result = page.locator("#drop-result")
    page.wait_for_function("() => document.querySelector('#drop-result').textContent.length > 40",
                           timeout=30_000)
    assert "MYNOTES.TXT" in result.inner_text(), result.inner_text()
    assert "drive A:" in result.inner_text()
    assert "my notes.txt" in result.inner_text()
    page.screenshot(path=str(tmp_path / "sandbox.png"))

    with page.expect_download(timeout=30_000) as download:
        page.get_by_role("link", name="Take my files").click()
    archive = tmp_path / "files.zip"
    download.value.save_as(archive)
    # Nothing was written on the machine's FAT disks: an empty zip.
    assert zipfile.ZipFile(archive).namelist() == []

    items.first.get_by_role("button", name="Delete").click()
    page.locator("#checkpoint-list li", has_text="None yet").wait_for(timeout=30_000)
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=30_000)
