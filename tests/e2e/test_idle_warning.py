"""An idle visitor is warned with a countdown, can stay, and is switched off if not."""
from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import Portal


@pytest.fixture
def portal_settings() -> dict[str, str]:
    return {"PORTAL_IDLE_S": "6", "PORTAL_WARNING_S": "4"}


def test_an_idle_visitor_sees_a_countdown_and_can_keep_the_machine(
    portal: Portal, browser: Any
) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)

    warning = page.locator("#warning")
    warning.wait_for(state="visible", timeout=15_000)
    assert "switches off in" in warning.inner_text()
    seconds = int(page.locator("#countdown").inner_text())
    assert 1 <= seconds <= 4
    page.get_by_role("button", name="I'm still here").click()
    warning.wait_for(state="hidden", timeout=5_000)
    assert page.locator("#state").get_attribute("data-state") == "running"

    # Left alone again, the machine is switched off and the page says why.
    warning.wait_for(state="visible", timeout=15_000)
    page.get_by_text("Nobody used the machine").wait_for(timeout=15_000)
    assert page.locator("#state").get_attribute("data-state") == "ended"
