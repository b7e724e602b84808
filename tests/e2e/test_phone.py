"""A visitor on a phone: taps and drags on the screen, the on-screen keyboard,
and the screen fitted to the phone held upright and across."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.e2e.conftest import Portal
from tests.e2e.test_visit import ABOUT_ICON, ABOUT_TITLE_BAR, CANVAS_STATS, NOTEPAD_TEXT, WHOLE

PHONE = {"width": 390, "height": 844}

# The About window's title bar is drawn (blue, no longer the desktop's teal).
ABOUT_OPEN = (f"() => {{ const d = document.querySelector('#screen canvas').getContext('2d')"
              f".getImageData({ABOUT_TITLE_BAR[0]}, {ABOUT_TITLE_BAR[1]}, 1, 1).data;"
              f" return d[0] === 0 && d[1] === 0 && d[2] > 150; }}")
NOTEPAD_HASH = f"() => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash"


def _phone(browser: Any) -> Any:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    return context.new_page()


def _start(page: Any, portal: Portal, *, slug: str = "demo") -> None:
    page.goto(f"{portal.url}/exhibits/{slug}/")
    page.get_by_role("button", name="Start").tap()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function(
        f"() => {{ const s = ({CANVAS_STATS})({WHOLE}); return s && s.lit > 10000; }}", timeout=30_000)


def _fits(page: Any) -> dict[str, float]:
    """The screen's box, once it is scaled to the room it has (as wide or as high
    as its area) and lies wholly inside the viewport."""
    page.wait_for_function(
        """() => { const b = document.querySelector('#screen canvas').getBoundingClientRect();
                   const area = document.querySelector('#screen').getBoundingClientRect();
                   const w = window.innerWidth, h = window.innerHeight;
                   const scaled = Math.abs(b.width - area.width) < 2 || Math.abs(b.height - area.height) < 2;
                   return scaled && area.height > 0 && b.left >= 0 && b.top >= 0
                     && b.right <= w + 0.5 && b.bottom <= h + 0.5; }""", timeout=20_000)
    box = page.locator("#screen canvas").bounding_box()
    assert box is not None
    return dict(box)


def _wait_hash(page: Any, *, changed_from: int | None = None, equal_to: int | None = None) -> int:
    if changed_from is not None:
        page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() !== h", arg=changed_from, timeout=15_000)
    if equal_to is not None:
        page.wait_for_function(f"(h) => ({NOTEPAD_HASH})() === h", arg=equal_to, timeout=15_000)
    return int(page.evaluate(NOTEPAD_HASH))


def test_it_lets_a_phone_tap_type_and_turn(portal: Portal, browser: Any) -> None:
    page = _phone(browser)
    _start(page, portal)

    # Upright: the whole screen is on the phone, as wide as the phone, below the toolbar.
    box = _fits(page)
    assert abs(box["width"] - PHONE["width"]) < 2
    toolbar = page.locator("header.bar").bounding_box()
    assert toolbar is not None
    assert toolbar["height"] < 80
    assert box["y"] >= toolbar["height"] - 1

    # A tap is a click where the finger is: the About icon opens its window.
    scale = box["width"] / 640
    page.touchscreen.tap(box["x"] + ABOUT_ICON[0] * scale, box["y"] + ABOUT_ICON[1] * scale)
    page.wait_for_function(ABOUT_OPEN, timeout=15_000)

    # The on-screen keyboard opens below the screen, which shrinks to stay whole.
    page.get_by_role("button", name="Keyboard", exact=True).tap()
    keyboard = page.get_by_role("group", name="On-screen keyboard")
    assert keyboard.is_visible()
    _fits(page)

    # One character at a time, so that each picture of Notepad is a settled one.
    # A letter from the phone's own keyboard reaches the guest's Notepad...
    before = int(page.evaluate(NOTEPAD_HASH))
    keyboard.get_by_role("button", name="Type text with your device's keyboard").tap()
    assert page.evaluate("document.activeElement.id") == "osk-text"
    page.keyboard.type("h")
    lower = _wait_hash(page, changed_from=before)
    # ...the on-screen Backspace takes it away...
    backspace = keyboard.get_by_role("button", name="Backspace")
    backspace.tap()
    _wait_hash(page, equal_to=before)
    # ...a capital arrives as a capital (the page holds Shift for it)...
    page.keyboard.type("H")
    page.wait_for_function(f"([a, b]) => ![a, b].includes(({NOTEPAD_HASH})())", arg=[before, lower],
                           timeout=15_000)
    upper = int(page.evaluate(NOTEPAD_HASH))
    backspace.tap()
    _wait_hash(page, equal_to=before)
    # ...and the on-screen Shift is held for the next key only: Shift, h types "H",
    # and the h after it is small again.
    shift = keyboard.get_by_role("button", name="Shift")
    shift.tap()
    assert shift.get_attribute("aria-pressed") == "true"
    page.keyboard.type("h")
    _wait_hash(page, equal_to=upper)
    assert shift.get_attribute("aria-pressed") == "false"
    backspace.tap()
    _wait_hash(page, equal_to=before)
    page.keyboard.type("h")
    _wait_hash(page, equal_to=lower)

    # Across (the keyboard still open): the screen is rescaled to the phone on
    # its side, and still shows whole; closing the keyboard gives it more room.
    page.set_viewport_size({"width": PHONE["height"], "height": PHONE["width"]})
    across = _fits(page)
    assert across["width"] != box["width"]
    page.get_by_role("button", name="Keyboard", exact=True).tap()
    page.wait_for_function(
        "(h) => document.querySelector('#screen canvas').getBoundingClientRect().height > h",
        arg=across["height"], timeout=20_000)
    _fits(page)

    page.get_by_role("button", name="End").tap()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    page.context.close()


def test_it_drives_a_relative_mouse_like_a_touchpad(portal: Portal, browser: Any, demo_image: Path) -> None:
    """Where the exhibit has only a PS/2 mouse, the screen is a touchpad: a finger's
    movement moves the guest's pointer by as much, and a tap clicks where the
    pointer is, not where the finger is."""
    portal.manage("add_exhibit", str(demo_image), "--slug", "demo-ps2", "--title", "Demo on PS/2",
                  "--boot", "hdd", "--mouse", "ps2", "--publish")
    page = _phone(browser)
    _start(page, portal, slug="demo-ps2")
    touchpad = page.locator("#touchpad-toggle")
    assert touchpad.get_attribute("aria-pressed") == "true"
    box = _fits(page)
    scale = box["width"] / 640

    # One finger from the middle of the screen, moved as far as the About icon is
    # from the guest's pointer (which starts in the middle of its screen).
    cdp = page.context.new_cdp_session(page)
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    dx, dy = (ABOUT_ICON[0] - 320) * scale, (ABOUT_ICON[1] - 240) * scale
    cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    steps = 10
    for step in range(1, steps + 1):
        cdp.send("Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [
            {"x": x + dx * step / steps, "y": y + dy * step / steps}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    assert not page.evaluate(ABOUT_OPEN)

    # A tap far from the icon clicks where the pointer now is: on the icon.
    page.touchscreen.tap(box["x"] + box["width"] - 10, box["y"] + box["height"] - 10)
    page.wait_for_function(ABOUT_OPEN, timeout=15_000)

    # Switched off (from the toolbar's More menu, on a phone held upright), the
    # fingers go to noVNC's own gestures again.
    page.get_by_role("button", name="More actions").tap()
    touchpad.tap()
    assert touchpad.get_attribute("aria-pressed") == "false"
    assert page.locator(".touchpad").is_hidden()
    page.get_by_role("button", name="End").tap()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    page.context.close()
