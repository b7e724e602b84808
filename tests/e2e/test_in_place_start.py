"""Start without leaving the page, in Chromium through Daphne: the exhibit page (and
the embed page) turns into the machine's page in place, with the machine's address,
so that reload and Back behave as after a navigation; Reset on it; and the plain
form, without scripts, still reaches the machine's page."""
from __future__ import annotations

import re
from typing import Any

from tests.e2e.conftest import Portal

SESSION_URL = re.compile(r"/sessions/([A-Za-z0-9_-]{32})/(\?embed=1)?$")
# The demo's own desktop: teal at the right edge of its 640x480 screen.
DESKTOP_DRAWN = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width !== 640 || canvas.height !== 480) return false;
  const [r, g] = canvas.getContext('2d').getImageData(630, 300, 1, 1).data;
  return g > 120 && r < 40;
}"""
# Set on the page before Start: still there afterwards only if the page was not left.
MARK = "() => { window.portalTestMark = 'exhibit page'; }"
MARKED = "() => window.portalTestMark === 'exhibit page'"


def _machine_shown(page: Any) -> str:
    """The machine's page is there, its desktop drawn; the session's id."""
    page.wait_for_url(SESSION_URL, timeout=30_000)
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function(DESKTOP_DRAWN, timeout=30_000)
    match = SESSION_URL.search(page.url)
    assert match
    return match.group(1)


def test_start_turns_the_exhibit_page_into_the_machines_page(portal: Portal, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(portal.url + "/exhibits/demo/")
    page.evaluate(MARK)
    page.get_by_role("button", name="Start").click()
    session_id = _machine_shown(page)
    # The same page, changed: not a navigation to another one.
    assert page.evaluate(MARKED)
    assert page.title().startswith("Portal demo")
    # As on a loaded machine page: the keyboard goes to the screen, the toolbar is there.
    page.wait_for_function("() => document.getElementById('screen').contains(document.activeElement)")
    assert page.get_by_role("button", name="End").is_visible()
    page.wait_for_function("() => document.getElementById('announce').textContent"
                           " === 'The machine is running.'")

    # Reset in place: the machine's clean start is drawn again.
    page.get_by_role("button", name="Reset").click()
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function(DESKTOP_DRAWN, timeout=30_000)
    assert page.evaluate(MARKED)

    # Reload: the same machine, from its address.
    page.reload()
    assert _machine_shown(page) == session_id
    assert not page.evaluate(MARKED)

    # Back: the exhibit page, as it was before the start.
    page.go_back()
    page.wait_for_url(portal.url + "/exhibits/demo/")
    page.get_by_role("heading", name="Portal demo").wait_for()
    page.get_by_role("button", name="Start").wait_for()
    # And Forward: the machine again.
    page.go_forward()
    assert _machine_shown(page) == session_id
    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)

    # The embed page (chrome-less, for other sites' frames) does the same.
    embed = browser.new_page(viewport={"width": 800, "height": 640})
    embed.goto(portal.url + "/exhibits/demo/embed")
    embed.evaluate(MARK)
    embed.get_by_role("button", name="Start").click()
    _machine_shown(embed)
    assert embed.url.endswith("?embed=1")
    assert embed.evaluate(MARKED)
    assert embed.locator("body.embedded").count() == 1
    embed.reload()
    _machine_shown(embed)
    embed.get_by_role("button", name="End").click()
    embed.wait_for_selector('#state[data-state="ended"]', timeout=15_000)


def test_start_without_scripts_still_reaches_the_machines_page_and_with_them_the_page_comes_with_it(
        portal: Portal, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(SESSION_URL, timeout=30_000)
    match = SESSION_URL.search(page.url)
    assert match
    assert page.locator("#notice").inner_text() == "Starting the machine…"
    # The machine runs: the visitor's cookie owns it.
    answer = context.request.get(f"{portal.url}/api/sessions/{match.group(1)}")
    assert answer.status == 200, answer.text()
    assert answer.json()["state"] in {"starting", "running"}
    context.close()
    # With scripts, the start's answer carries the page (one portal for both checks).
    _page_that_comes_with_a_start_checked(portal, browser)


# What differs between two renderings of one machine's page a moment apart: the
# form's CSRF token, and the state (the machine may have come up in between).
_MOMENT = [
    (re.compile(r'name="csrfmiddlewaretoken" value="[^"]*"'), 'name="csrfmiddlewaretoken"'),
    (re.compile(r'<span id="(machine-)?state".*?</span>', re.S), '<span id="state">'),
    (re.compile(r'<script id="session-data" type="application/json">.*?</script>', re.S), "<script>"),
]


def _page_moment_free(html: str) -> str:
    for pattern, replacement in _MOMENT:
        html = pattern.sub(replacement, html)
    return html


def _page_that_comes_with_a_start_checked(portal: Portal, browser: Any) -> None:
    """The page a start with `page=1` carries is the one its address serves."""
    for embed in ("", "&embed=1"):
        context = browser.new_context()
        page = context.new_page()
        page.goto(portal.url + "/exhibits/demo/")
        token = next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
        answer = context.request.post(f"{portal.url}/api/exhibits/demo/sessions?page=1{embed}",
                                      headers={"X-CSRFToken": token, "Referer": portal.url + "/"})
        assert answer.status == 201, answer.text()
        started = answer.json()
        served = context.request.get(portal.url + started["page_url"] + ("?embed=1" if embed else ""))
        assert served.status == 200
        assert _page_moment_free(started["page_html"]) == _page_moment_free(served.text())
        assert f'"id": "{started["id"]}"' in started["page_html"]
        assert ('class="machine embedded"' in started["page_html"]) == bool(embed)
        # Without `page=1` the answer is the plain Session.
        context.request.delete(f"{portal.url}/api/sessions/{started['id']}",
                               headers={"X-CSRFToken": token, "Referer": portal.url + "/"})
        plain = context.request.post(f"{portal.url}/api/exhibits/demo/sessions",
                                     headers={"X-CSRFToken": token, "Referer": portal.url + "/"})
        assert plain.status == 201
        assert "page_html" not in plain.json()
        context.request.delete(f"{portal.url}/api/sessions/{plain.json()['id']}",
                               headers={"X-CSRFToken": token, "Referer": portal.url + "/"})
        context.close()
