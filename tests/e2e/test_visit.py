"""A visitor in Chromium: open the exhibit, Start, see and use the machine, End."""
from __future__ import annotations

import contextlib
import os
import re
from typing import Any

from tests.e2e.conftest import Portal
from tests.support.processes import processes_naming

# Counts lit pixels and fingerprints a region of noVNC's canvas, as a person would
# look at it: what is drawn, not how it got there.
CANVAS_STATS = """
([x0, y0, x1, y1]) => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return null;
  const w = Math.min(canvas.width, x1) - x0, h = Math.min(canvas.height, y1) - y0;
  const data = canvas.getContext('2d').getImageData(x0, y0, w, h).data;
  let lit = 0, hash = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i] | data[i + 1] | data[i + 2]) lit++;
    hash = (hash * 31 + data[i] * 7 + data[i + 1] * 3 + data[i + 2]) | 0;
  }
  return {lit, hash, width: canvas.width, height: canvas.height};
}
"""
WHOLE = [0, 0, 4096, 4096]
# Where the demo's Notepad shows typed text (see demo/demo.asm).
NOTEPAD_TEXT = [16, 260, 436, 436]
ABOUT_ICON = (256, 102)
ABOUT_TITLE_BAR = (540, 222)


def test_it_lets_a_visitor_start_use_and_end_a_machine(portal: Portal, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(portal.url + "/")
    page.get_by_role("link", name="Portal demo").click()
    assert page.get_by_role("heading", name="Portal demo").is_visible()
    page.get_by_role("button", name="Start").click()

    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    badge = page.locator("#accelerator").inner_text()
    assert badge in {"KVM", "Software emulation"}

    # The guest's own picture arrives: a real desktop, not a black canvas.
    page.wait_for_function(
        f"() => {{ const s = ({CANVAS_STATS})({WHOLE}); return s && s.lit > 10000; }}",
        timeout=30_000,
    )
    stats = page.evaluate(CANVAS_STATS, WHOLE)
    assert (stats["width"], stats["height"]) == (640, 480)
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    pid, run_dir = portal.machine(session_id)

    # The mouse reaches the guest: clicking the About icon, where noVNC shows it
    # scaled to the window, opens the About window (its title bar turns from teal).
    canvas = page.locator("#screen canvas")
    box = canvas.bounding_box()
    assert box is not None
    scale_x, scale_y = box["width"] / 640, box["height"] / 480
    canvas.click(position={"x": ABOUT_ICON[0] * scale_x, "y": ABOUT_ICON[1] * scale_y})
    page.wait_for_function(
        f"() => {{ const d = document.querySelector('#screen canvas').getContext('2d')"
        f".getImageData({ABOUT_TITLE_BAR[0]}, {ABOUT_TITLE_BAR[1]}, 1, 1).data;"
        f" return d[0] === 0 && d[1] === 0 && d[2] > 150; }}",
        timeout=15_000,
    )

    # Keys reach the guest: what was typed is drawn.
    before = page.evaluate(CANVAS_STATS, NOTEPAD_TEXT)
    page.keyboard.type("Hello museum")
    page.wait_for_function(
        f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
        arg=before["hash"], timeout=15_000,
    )

    typed = page.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]

    # Reset: a new machine at the exhibit's start, without what was typed.
    page.get_by_role("button", name="Reset").click()
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function(
        f"(typed) => {{ const s = ({CANVAS_STATS})({NOTEPAD_TEXT}); return s && s.lit > 10000"
        f" && s.hash !== typed; }}",
        arg=typed, timeout=30_000,
    )
    new_pid, new_run_dir = portal.machine(session_id)
    assert new_pid != pid
    assert new_run_dir != run_dir

    page.get_by_role("button", name="End").click()
    page.wait_for_selector('#state[data-state="ended"]', timeout=15_000)
    assert "This machine has ended" in page.locator("#notice").inner_text()

    # Nothing of the visit is left: processes, sockets, overlays (the warm pool's
    # machines wait beside it).
    for gone in (run_dir, new_run_dir):
        assert not gone.exists()
        assert processes_naming(gone) == []
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    with contextlib.suppress(ProcessLookupError):
        os.kill(new_pid, 0)
        raise AssertionError("the reset machine outlived the visit")


def test_start_works_before_the_page_script_runs(portal: Portal, browser: Any) -> None:
    """Start is a plain form under the script: a press on a slow phone before the
    script has run (here: no script at all) still starts the machine, and a refusal
    is said on the exhibit page."""
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    machine_page = page.url

    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(portal.url + "/api/exhibits/demo/sessions")
    assert "This browser already has a machine running." in page.locator("#message").inner_text()
    page.get_by_role("link", name="Go back to it").click()
    page.wait_for_url(machine_page)
    context.close()
