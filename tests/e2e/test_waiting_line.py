"""Two visitors and one machine: the second waits in line and sees its place."""
from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.conftest import Portal


@pytest.fixture
def portal_settings() -> dict[str, str]:
    return {"PORTAL_MAX_SESSIONS": "1", "PORTAL_LIVE_PER_ADDRESS": "10"}


def test_the_second_visitor_waits_in_line_and_gets_the_machine_when_it_is_free(
    portal: Portal, browser: Any
) -> None:
    pages = []
    for _ in range(2):
        context = browser.new_context(viewport={"width": 1024, "height": 768})
        page = context.new_page()
        page.goto(portal.url + "/exhibits/demo/")
        page.get_by_role("button", name="Start").click()
        page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
        pages.append(page)
    first, second = pages
    first.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    second.wait_for_selector('#state[data-state="queued"]', timeout=10_000)
    assert second.locator("#queue-position").inner_text() == "number 1"
    assert "Every machine is in use" in second.locator("#notice").inner_text()

    first.get_by_role("button", name="End").click()
    second.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    second.wait_for_function(
        "() => { const c = document.querySelector('#screen canvas'); return c && c.width === 640; }",
        timeout=30_000,
    )
    second.get_by_role("button", name="End").click()
    second.get_by_text("This machine has ended.").wait_for(timeout=15_000)
