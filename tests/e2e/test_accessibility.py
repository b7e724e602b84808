"""Visitors of every ability: every visitor page in every state has no WCAG 2.1 A
or AA violation axe-core can find, on a desktop and on a phone; a keyboard alone
starts a machine, types into it, leaves it and ends the visit; the toolbar keeps
every action on a narrow screen.

axe-core (package.json's devDependency) is put into each page as it is; a
violation names the rule and the elements, so a failure says what to fix."""
from __future__ import annotations

import os
import re
import signal
from typing import Any

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import Portal
from tests.e2e.test_visit import CANVAS_STATS, NOTEPAD_TEXT, WHOLE

AXE = REPO / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP: dict[str, Any] = {"viewport": {"width": 1280, "height": 800}}
PHONE: dict[str, Any] = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
                         "device_scale_factor": 2}
SESSION_URL = re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$")
# The guest's picture has arrived and noVNC's canvas has its name (screen-focus.js).
SCREEN_SHOWN = (f"() => {{ const s = ({CANVAS_STATS})({WHOLE});"
                f" const c = document.querySelector('#screen canvas');"
                f" return s && s.lit > 10000 && c.getAttribute('aria-label'); }}")
NOTEPAD_HASH = f"() => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash"

AXE_RUN = """async () => {
  const result = await axe.run(document, {
    runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] },
  });
  return result.violations.map((v) => `${v.id} (${v.help}): ` +
    v.nodes.map((n) => `${n.target.join(" ")} ${n.failureSummary}`).join("; "));
}"""


def _axe_clean(page: Any, where: str) -> None:
    """axe-core finds no WCAG 2.1 A or AA violation on the page as it is now."""
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(path=str(AXE))
    violations = page.evaluate(AXE_RUN)
    assert violations == [], f"{where}: {violations}"


def _both(browser: Any, path: str, portal: Portal, *, like: Any = None) -> tuple[Any, Any]:
    """The page on a desktop and on a phone (with the cookies of `like`'s visitor)."""
    pages = []
    for size in (DESKTOP, PHONE):
        context = browser.new_context(**size)
        if like is not None:
            context.add_cookies(like.context.cookies())
        page = context.new_page()
        page.goto(portal.url + path)
        pages.append(page)
    return pages[0], pages[1]


def _start(browser: Any, portal: Portal) -> Any:
    page = browser.new_context(**DESKTOP).new_page()
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(SESSION_URL)
    return page


@pytest.fixture
def portal_settings() -> dict[str, str]:
    # One machine at a time (a second visitor waits in line), and an idle warning
    # ten seconds into a visit that nobody uses.
    return {"PORTAL_MAX_SESSIONS": "1", "PORTAL_LIVE_PER_ADDRESS": "10",
            "PORTAL_IDLE_S": "60", "PORTAL_WARNING_S": "50"}


def test_every_visitor_page_in_every_state_passes_axe_on_a_desktop_and_a_phone(
    portal: Portal, browser: Any
) -> None:
    for path in ("/", "/exhibits/demo/", "/exhibits/demo/embed"):
        for page in _both(browser, path, portal):
            _axe_clean(page, path)
            page.context.close()

    # Running: the desktop page, its checkpoints panel open, and the phone's with its menu open.
    first = _start(browser, portal)
    first.wait_for_function(SCREEN_SHOWN, timeout=30_000)
    _axe_clean(first, "running")
    first.get_by_role("button", name="Checkpoints & files").click()
    first.get_by_role("heading", name="Checkpoints").wait_for()
    _axe_clean(first, "running, checkpoints open")
    first.get_by_role("button", name="Checkpoints & files").click()
    _, phone = _both(browser, first.url.removeprefix(portal.url), portal, like=first)
    phone.wait_for_function(SCREEN_SHOWN, timeout=30_000)
    _axe_clean(phone, "running on a phone")
    phone.get_by_role("button", name="More actions").tap()
    phone.get_by_role("button", name="Reset").wait_for()
    _axe_clean(phone, "running on a phone, its menu open")
    phone.get_by_role("button", name="More actions").tap()

    # Nobody has used the machine: the idle warning, announced once, and kept away
    # by the keyboard alone.
    for page, where in ((first, "desktop"), (phone, "phone")):
        page.locator("#still-here").wait_for(timeout=30_000)
        _axe_clean(page, f"idle warning on the {where}")
    assert "I'm still here button" in first.locator("#announce-urgent").inner_text()
    first.locator("#still-here").focus()
    first.keyboard.press("Enter")
    first.locator("#warning").wait_for(state="hidden", timeout=10_000)
    first.wait_for_function("() => document.getElementById('announce').textContent"
                            " === 'The machine stays on.'")

    # Starting: the page before the machine's screen arrives (its sockets held back, so
    # neither the screen nor a state message comes).
    for size in (DESKTOP, PHONE):
        context = browser.new_context(**size)
        context.add_cookies(first.context.cookies())
        starting = context.new_page()
        starting.route_web_socket(re.compile(r"/ws/sessions/"), lambda socket: None)
        starting.goto(first.url)
        starting.get_by_text("Starting the machine…").wait_for()
        _axe_clean(starting, "starting")
        context.close()

    # Watching, on a desktop and on a phone.
    first.get_by_role("button", name="Watch together").click()
    first.wait_for_function("() => document.getElementById('watch-url').value !== ''")
    _axe_clean(first, "the watch panel open")
    watch_url = first.locator("#watch-url").input_value()
    for page in _both(browser, watch_url.removeprefix(portal.url), portal):
        page.wait_for_function(SCREEN_SHOWN, timeout=30_000)
        _axe_clean(page, "watching")
        page.context.close()
    first.get_by_role("button", name="Watch together").click()

    # A second visitor waits in line.
    second = _start(browser, portal)
    second.wait_for_selector('#state[data-state="queued"]', timeout=10_000)
    assert second.locator("#queue-position").inner_text() == "number 1"
    _axe_clean(second, "waiting in line")
    _, second_phone = _both(browser, second.url.removeprefix(portal.url), portal, like=second)
    second_phone.wait_for_selector('#state[data-state="queued"]', timeout=10_000)
    _axe_clean(second_phone, "waiting in line on a phone")
    third = _start(browser, portal)
    third.wait_for_selector('#state[data-state="queued"]', timeout=10_000)
    assert third.locator("#queue-position").inner_text() == "number 2"

    # The first visit ends: its pages say so; the second visitor's machine starts.
    first.get_by_role("button", name="End").click()
    for page, where in ((first, "desktop"), (phone, "phone")):
        page.get_by_text("This machine has ended.").wait_for(timeout=15_000)
        _axe_clean(page, f"ended on the {where}")
    second.wait_for_function(SCREEN_SHOWN, timeout=60_000)
    assert second.locator("#announce").inner_text() == "The machine is running."
    # The third visitor moves up the line, and hears it said once, as a sentence.
    third.wait_for_function("() => document.getElementById('announce').textContent"
                            " === 'You are now number 1 in line.'", timeout=10_000)
    assert third.locator("#queue-position").inner_text() == "number 1"
    third.context.close()

    # The machine crashes.
    pid, _ = portal.machine(second.url.rstrip("/").rsplit("/", 1)[1])
    os.kill(pid, signal.SIGKILL)
    for page, where in ((second, "desktop"), (second_phone, "phone")):
        page.get_by_text("The machine stopped.", exact=True).wait_for(timeout=30_000)
        _axe_clean(page, f"crashed on the {where}")


def _toolbar_fits(page: Any) -> None:
    """At 320, 390 and 768 px wide every action of the toolbar is on the screen
    (Keyboard and End in the row, the rest in the More menu); at 1280 all in the row."""
    more = page.get_by_role("button", name="More actions")
    for width in (320, 390, 768):
        page.set_viewport_size({"width": width, "height": 700})
        # Keyboard, More and End in view; nothing past the screen's edge.
        for main in ("osk-toggle", "more-toggle", "end"):
            assert page.evaluate(ON_SCREEN, main), f"{main} is off-screen at {width} px"
        assert page.evaluate("() => document.documentElement.scrollWidth") <= width
        assert more.get_attribute("aria-expanded") == "false"
        more.click()
        assert more.get_attribute("aria-expanded") == "true"
        for action in ACTIONS:
            if action == "fullscreen" and page.locator("#fullscreen").is_hidden():
                continue
            assert page.evaluate(ON_SCREEN, action), f"{action} is off-screen at {width} px"
        # Escape closes the menu and leaves the focus on More.
        page.locator("#reset").focus()
        page.keyboard.press("Escape")
        assert more.get_attribute("aria-expanded") == "false"
        assert page.evaluate("() => document.activeElement.id") == "more-toggle"
        assert page.locator("#reset").is_hidden()
    # A wide screen has no menu: every action sits in the row.
    page.set_viewport_size({"width": 1280, "height": 800})
    assert more.is_hidden()
    for action in ACTIONS:
        if action != "fullscreen":
            assert page.evaluate(ON_SCREEN, action), f"{action} is off-screen at 1280 px"


@pytest.mark.parametrize("portal_settings", [{}], ids=["defaults"])
def test_a_keyboard_alone_starts_uses_leaves_and_ends_a_machine_on_a_toolbar_that_fits(
    portal: Portal, browser: Any
) -> None:
    page = browser.new_context(**DESKTOP).new_page()
    page.goto(portal.url + "/exhibits/demo/")

    def tab_to(selector: str, *, back: bool = False, most: int = 40) -> None:
        for _ in range(most):
            page.keyboard.press("Shift+Tab" if back else "Tab")
            if page.evaluate(f"() => document.activeElement.matches({selector!r})"):
                # Seen: the focus ring is drawn.
                outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
                assert outline != "none", f"{selector} has no visible focus"
                return
        raise AssertionError(f"{selector} is not reachable by the keyboard")

    tab_to("#start")
    page.keyboard.press("Enter")
    page.wait_for_url(SESSION_URL)
    page.wait_for_function(SCREEN_SHOWN, timeout=30_000)

    # The page's focus was nowhere, so the machine has the keyboard, and its
    # screen has a name and says how to leave it.
    canvas = page.locator("#screen canvas")
    assert page.evaluate("() => document.activeElement === document.querySelector('#screen canvas')")
    assert canvas.get_attribute("role") == "application"
    assert canvas.get_attribute("aria-label") == "The machine's screen"
    assert "Ctrl+Alt+Shift" in page.locator("#screen-keys").inner_text()
    assert page.locator("#screen-help").is_visible()

    # Keys reach the guest's Notepad, Tab among them (it stays in the machine).
    before = int(page.evaluate(NOTEPAD_HASH))
    page.keyboard.press("h")
    page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() !== h", arg=before, timeout=15_000)
    typed_h = int(page.evaluate(NOTEPAD_HASH))
    page.keyboard.press("Backspace")
    page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() === h", arg=before, timeout=15_000)
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement === document.querySelector('#screen canvas')")
    # (the demo's Notepad types a Tab as a space)
    page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() !== h", arg=before, timeout=15_000)
    page.keyboard.press("Backspace")
    page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() === h", arg=before, timeout=15_000)

    # Ctrl+Alt+Shift gives the focus back to the page.
    page.keyboard.down("Control")
    page.keyboard.down("Alt")
    page.keyboard.down("Shift")
    assert page.evaluate("() => document.activeElement.id") == "screen-enter"
    for key in ("Shift", "Alt", "Control"):
        page.keyboard.up(key)

    # Back in with Enter: no key of the chord stayed held in the guest (an h is an h).
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement === document.querySelector('#screen canvas')")
    page.keyboard.press("h")
    page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() === h", arg=typed_h, timeout=15_000)

    # The toolbar keeps every action on a narrow screen.
    _toolbar_fits(page)

    # Out again, and back along the page to End.
    page.locator("#screen-enter").press("Enter")
    page.keyboard.press("Control+Alt+Shift")
    assert page.evaluate("() => document.activeElement.id") == "screen-enter"
    tab_to("#end", back=True)
    page.keyboard.press("Enter")
    page.get_by_text("This machine has ended.").wait_for(timeout=15_000)
    # The screen is gone: the focus is on what comes next, not lost.
    assert page.evaluate("() => document.activeElement.id") == "restart"


# What a visitor can do from the machine page's toolbar.
ACTIONS = ["osk-toggle", "sound", "save-checkpoint", "checkpoints-toggle", "take-files", "reset",
           "ctrl-alt-del", "paste", "combo", "screenshot", "watch-toggle", "fullscreen", "end"]

ON_SCREEN = """(id) => {
  const element = document.getElementById(id);
  const box = element.getBoundingClientRect();
  const x = box.left + box.width / 2, y = box.top + box.height / 2;
  const hit = document.elementFromPoint(x, y);
  return box.width > 0 && box.left >= 0 && box.top >= 0 && box.right <= innerWidth
    && box.bottom <= innerHeight && (hit === element || element.contains(hit));
}"""


