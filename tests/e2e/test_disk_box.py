"""The disk box through the served portal (Daphne) and Chromium on a phone.

An exhibit added with a disk set (`add_exhibit --disk`: two floppies of their own
volume labels and a CD), prepared, visited from the warm pool: the exhibit lists
its disks; the session page's disk box shows Disk 1 in B:, and a visitor using the
keyboard alone puts Disk 2 in, which is announced, shown in a second tab of the
visit (the events socket) and on the watch page of a watch link, and listed by
DOS's own `dir B:`; Eject empties the drive. The box fits a phone's screen without
sideways scrolling and passes axe-core.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import PortalFactory
from tests.e2e.test_accessibility import PHONE, _axe_clean
from tests.support.disk_set import cd_make, floppy_make
from tests.support.portal_http import PortalVisitor
from tests.support.wait import wait_until

TIMEOUT_S = 60


def test_a_visitor_changes_disks_from_the_page_and_dos_reads_them(
        portal_make: PortalFactory, browser: Any, tmp_path: Path) -> None:
    portal = portal_make()
    one = floppy_make(tmp_path / "one.img", label="DISK1", files={"ONE.TXT": b"one\r\n"}, serial="11111111")
    two = floppy_make(tmp_path / "two.img", label="DISK2", files={"TWO.TXT": b"two\r\n"}, serial="22222222")
    cd = cd_make(tmp_path / "cd.iso")
    # Software emulation: a floppy does not boot under nested KVM.
    portal.manage("add_exhibit", str(FREEDOS_GAMES), "--slug", "dos", "--title", "FreeDOS",
                  "--boot", "floppy", "--accelerator", "tcg", "--publish",
                  "--disk", str(one), "Disk 1 — Setup", "b", "in",
                  "--disk", str(two), "Disk 2 — Data",
                  "--disk", str(cd), "CD-ROM")
    portal.manage("prepare_exhibit", "dos", "--wait-text", "A:\\>", "--still", "1")
    status, exhibit = PortalVisitor(portal.url).request("GET", "/api/exhibits/dos")
    assert status == 200
    listed = [(disk["label"], disk["media"], disk["drive"], disk["write_protected"])
              for disk in exhibit["disks"]]
    assert listed == [("Disk 1 — Setup", "floppy", "b", False), ("Disk 2 — Data", "floppy", "b", False),
                      ("CD-ROM", "cdrom", "cd", False)]

    phone = browser.new_context(**PHONE)
    page = phone.new_page()
    page.goto(portal.url + "/exhibits/dos/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    box = page.get_by_role("region", name="Disk box")
    box.wait_for(timeout=TIMEOUT_S * 1000)
    summary = box.locator("summary")
    summary.wait_for()
    page.wait_for_function("() => document.getElementById('disk-box-summary').textContent"
                           ".includes('Drive B: Disk 1 — Setup')", timeout=TIMEOUT_S * 1000)
    assert "CD drive empty" in summary.inner_text()

    # A second tab of the same visit learns every change from the events socket.
    other = phone.new_page()
    other.goto(page.url)
    other.wait_for_function("() => document.getElementById('disk-box-summary').textContent"
                            ".includes('Disk 1 — Setup')", timeout=TIMEOUT_S * 1000)

    # The keyboard alone: open the box, choose Disk 2 for B:, put it in.
    summary.focus()
    page.keyboard.press("Enter")
    choice = box.get_by_label("Disk for Drive B:")
    choice.focus()
    choice.select_option(label="Disk 2 — Data")
    assert [option.strip() for option in choice.locator("option").all_inner_texts()] \
        == ["Disk 1 — Setup", "Disk 2 — Data", "Blank disk for your files"]
    put_in = box.get_by_role("button", name="Put in B:")
    put_in.focus()
    page.keyboard.press("Enter")
    status_line = page.locator("#disk-box-status")
    wait_until(lambda: status_line.text_content() == "Disk 2 — Data is in Drive B:.", timeout_s=30,
               what="the change announced")
    assert status_line.get_attribute("role") == "status"
    other.wait_for_function("() => document.getElementById('disk-box-summary').textContent"
                            ".includes('Drive B: Disk 2 — Data')", timeout=30_000)
    # Someone watching by a link sees it too, on the watch page.
    token = next(cookie["value"] for cookie in phone.cookies() if cookie["name"] == "csrftoken")
    link = page.request.post(f"{portal.url}/api/sessions/{session_id}/watchers",
                             headers={"X-CSRFToken": token})
    assert link.status == 201, link.text()
    watching = browser.new_context(viewport={"width": 1200, "height": 800})
    watch_page = watching.new_page()
    watch_page.goto(portal.url + link.json()["watch_url"])
    watch_page.wait_for_function("() => document.getElementById('watch-drives').textContent"
                                 " === 'Drive B: Disk 2 — Data · CD drive empty'", timeout=30_000)
    watching.close()
    assert box.get_by_role("group", name="Drive B:").get_by_text("In it: Disk 2 — Data").is_visible()
    # On a phone the box fits the screen (nothing scrolls sideways) and passes axe-core.
    assert page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    _axe_clean(page, "the disk box open on a phone")

    # DOS lists Disk 2 (B: was not read before in this visit, so nothing of Disk 1 is cached).
    typed = page.request.post(f"{portal.url}/api/sessions/{session_id}/keys",
                              headers={"X-CSRFToken": token}, data={"text": "dir B:\n"})
    assert typed.status == 204, typed.text()

    def dir_shows_disk_two() -> bool:
        screen = page.request.get(f"{portal.url}/api/sessions/{session_id}/screen.txt").text()
        return "Volume in drive B is DISK2" in screen and "TWO      TXT" in screen
    wait_until(dir_shows_disk_two, timeout_s=TIMEOUT_S, what="DOS listing Disk 2")

    # Eject: the drive is empty, here, in the other tab and over the API.
    box.get_by_role("button", name="Eject the disk from Drive B:").click()
    wait_until(lambda: status_line.text_content() == "Drive B: is empty.", timeout_s=30,
               what="the drive announced empty")
    other.wait_for_function("() => document.getElementById('disk-box-summary').textContent"
                            ".includes('Drive B: empty')", timeout=30_000)
    drives = page.request.get(f"{portal.url}/api/sessions/{session_id}/drives").json()["drives"]
    assert drives == [{"drive": "b", "disk": None}, {"drive": "cd", "disk": None}]
    other.close()
    page.get_by_role("button", name="End").click()
    phone.close()
