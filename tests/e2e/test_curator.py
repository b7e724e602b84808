"""A curator in Chromium against Daphne: upload an image with the progress bar, preview a draft."""
from __future__ import annotations

from typing import Any

from tests.conftest import FREEDOS_2048
from tests.e2e.conftest import Portal


def log_in(portal: Portal, browser: Any) -> Any:
    portal.env["DJANGO_SUPERUSER_PASSWORD"] = "curator-password"
    portal.manage("createsuperuser", "--noinput", "--username", "curator", "--email", "c@portal.invalid")
    page = browser.new_page()
    page.goto(portal.url + "/admin/login/")
    page.fill("#id_username", "curator")
    page.fill("#id_password", "curator-password")
    page.click("input[type=submit]")
    page.wait_for_url(portal.url + "/admin/")
    return page


def test_a_curator_uploads_an_image_with_a_progress_bar_and_previews_a_draft(
    portal: Portal, browser: Any
) -> None:
    page = log_in(portal, browser)
    page.goto(portal.url + "/admin/portal/diskimage/")
    page.get_by_role("link", name="Upload a disk image").click()
    page.set_input_files("#id_image", str(FREEDOS_2048))
    # Record the progress bar's last value: the page is replaced when the upload is done.
    page.evaluate("""() => { const bar = document.getElementById('upload-progress');
        new MutationObserver(() => { window.sessionStorage.setItem('sent', bar.value); })
            .observe(bar, {attributes: true}); }""")
    page.click("input[type=submit]")
    page.wait_for_url("**/admin/portal/diskimage/*/change/", timeout=60_000)
    assert page.get_by_text("as a floppy disk master").is_visible()
    assert page.evaluate("() => window.sessionStorage.getItem('sent')") == "100"

    # A draft exhibit on the uploaded master, previewed from its admin page.
    portal.manage("add_exhibit", str(FREEDOS_2048), "--slug", "draft", "--title", "Draft DOS",
                  "--accelerator", "tcg")
    assert page.request.get(portal.url + "/exhibits/draft/").status == 404
    page.goto(portal.url + "/admin/portal/exhibit/")
    page.get_by_role("link", name="Draft DOS").click()
    page.get_by_role("button", name="Start a preview").click()
    page.wait_for_url("**/sessions/*/", timeout=60_000)
    page.get_by_role("button", name="End").click()
    page.get_by_text("ended", exact=False).first.wait_for(timeout=30_000)
