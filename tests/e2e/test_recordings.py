"""Recordings through the served portal and Chromium: a FreeDOS visit recorded while
a marker is typed, played back with noVNC (the end shows the marker as the machine
showed it, the middle the prompt before it, playing at 4x ends on the marker),
published as the exhibit's tour and played on the exhibit page and to a visitor
waiting in line (their place still shown), exported as WebM (its length, a late
frame with the marker), reachable by its link only, and refused once damaged.

One portal of one machine place for all of it: the visit being recorded is the
busy machine the second visitor waits for.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy

from tests.conftest import FREEDOS_GAMES
from tests.e2e.conftest import PortalFactory
from tests.e2e.test_curator import log_in
from tests.support.wait import wait_until

PROMPT = "A:\\>"
MARKER = "RECORDED MARKER 4711"
# Differing pixels that are noise between two pictures of one screen (the cursor's blink).
SAME_MAX = 300
# Differing pixels a typed line makes at least.
MARKER_MIN = 600

# How many pixels of the player's canvas differ from a PNG of the machine's screen.
CANVAS_DIFFERENCE = """async (png) => {
  const canvas = document.querySelector('.player-screen canvas');
  const image = new Image();
  image.src = png;
  await image.decode();
  if (image.width !== canvas.width || image.height !== canvas.height) return -1;
  const scratch = document.createElement('canvas');
  scratch.width = image.width; scratch.height = image.height;
  const context = scratch.getContext('2d');
  context.drawImage(image, 0, 0);
  const want = context.getImageData(0, 0, image.width, image.height).data;
  const have = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let differing = 0;
  for (let i = 0; i < want.length; i += 4) {
    const distance = Math.abs(want[i] - have[i]) + Math.abs(want[i + 1] - have[i + 1])
      + Math.abs(want[i + 2] - have[i + 2]);
    if (distance > 48) differing += 1;
  }
  return differing;
}"""


def _png_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _rgb(source: Path | bytes, *, at_s: float | None = None) -> numpy.ndarray[Any, Any]:
    """A picture (a PNG's bytes, or a video's frame at `at_s`) as an array, by ffmpeg."""
    seek = ["-ss", f"{at_s:.2f}"] if at_s is not None else []
    argv = ["ffmpeg", "-loglevel", "error", *seek, "-i",
            "pipe:0" if isinstance(source, bytes) else str(source),
            "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "gray", "-"]
    probe = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height",
             "-of", "json", "pipe:0" if isinstance(source, bytes) else str(source)]
    data = source if isinstance(source, bytes) else None
    size = json.loads(subprocess.run(probe, input=data, capture_output=True, check=True).stdout)["streams"][0]
    raw = subprocess.run(argv, input=data, capture_output=True, check=True).stdout
    return numpy.frombuffer(raw, dtype=numpy.uint8).reshape(size["height"], size["width"]).astype(int)


def test_a_recorded_visit_plays_back_seeks_tours_the_line_and_exports(
        portal_make: PortalFactory, browser: Any) -> None:
    portal = portal_make({"PORTAL_MAX_SESSIONS": "1", "PORTAL_LIVE_PER_ADDRESS": "10"}, prepare=False)
    # Software emulation: a floppy does not boot under nested KVM.
    portal.manage("add_exhibit", str(FREEDOS_GAMES), "--slug", "dos", "--title", "FreeDOS",
                  "--boot", "floppy", "--accelerator", "tcg", "--publish", "--visitors-may-record")
    portal.manage("prepare_exhibit", "dos", "--wait-text", PROMPT, "--still", "1")

    # --- A visitor records their visit while typing a marker. ---
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(portal.url + "/exhibits/dos/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    session_id = page.url.rstrip("/").rsplit("/", 1)[1]
    page.wait_for_selector('#state[data-state="running"]', timeout=60_000)
    token = next(cookie["value"] for cookie in context.cookies() if cookie["name"] == "csrftoken")

    def screen_text() -> str:
        return str(page.request.get(f"{portal.url}/api/sessions/{session_id}/screen.txt").text())

    wait_until(lambda: PROMPT in screen_text(), timeout_s=60, what="the DOS prompt")
    page.get_by_role("button", name="Record", exact=True).click()
    indicator = page.locator("#recording-indicator")
    indicator.wait_for(state="visible", timeout=10_000)
    assert "Recording" in indicator.inner_text()
    began = time.monotonic()

    def screenshot() -> bytes:
        answer = page.request.get(f"{portal.url}/api/sessions/{session_id}/screenshot.png")
        assert answer.status == 200
        return bytes(answer.body())

    wait_until(lambda: time.monotonic() - began > 3, timeout_s=10, what="three seconds of the prompt")
    before = screenshot()
    typed = page.request.post(f"{portal.url}/api/sessions/{session_id}/keys",
                              headers={"X-CSRFToken": token}, data={"text": f"REM {MARKER}"})
    assert typed.status == 204, typed.text()
    wait_until(lambda: MARKER in screen_text(), timeout_s=30, what="the marker on the screen")
    after = screenshot()
    typed_at = time.monotonic() - began
    wait_until(lambda: time.monotonic() - began > typed_at + 2, timeout_s=10, what="the marker recorded")
    page.get_by_role("button", name="Stop recording").click()
    link = page.locator("#recording-link")
    link.wait_for(timeout=15_000)
    recording_url = link.get_attribute("href")
    assert recording_url is not None
    recording_id = recording_url.strip("/").rsplit("/", 1)[1]
    recording = page.request.get(f"{portal.url}/api/recordings/{recording_id}").json()
    assert recording["url"] == recording_url
    assert recording["exhibit"] == "dos"
    assert recording["seconds"] > typed_at
    assert 0 < recording["bytes"] < 2 * 1024 * 1024

    # Another browser cannot record this visit; a guessed recording is not there.
    stranger = browser.new_context()
    assert stranger.request.post(f"{portal.url}/api/sessions/{session_id}/recording").status in {403, 404}
    assert stranger.request.get(f"{portal.url}/api/recordings/{'x' * 32}").status == 404

    # --- Played back: the end is the marker as the machine showed it, the middle the prompt. ---
    viewer = context.new_page()
    viewer.goto(portal.url + recording_url)
    player = viewer.locator("[data-player]")
    viewer.wait_for_selector('[data-player][data-state="paused"]', timeout=30_000)
    seek = viewer.get_by_role("slider", name="Position in the recording")
    seek.focus()
    seek.press("End")
    end_ms = round(recording["seconds"] * 1000)
    viewer.wait_for_function(
        f"() => Number(document.querySelector('[data-player]').dataset.seeked) >= {end_ms - 100}",
        timeout=30_000)
    assert viewer.evaluate(CANVAS_DIFFERENCE, _png_url(after)) < SAME_MAX
    assert viewer.evaluate(CANVAS_DIFFERENCE, _png_url(before)) > MARKER_MIN
    middle_s = typed_at / 2
    viewer.evaluate(f"""() => {{ const s = document.querySelector('.player-seek');
        s.value = '{middle_s:.1f}'; s.dispatchEvent(new Event('input')); }}""")
    viewer.wait_for_function(f"() => document.querySelector('[data-player]').dataset.seeked === "
                             f"'{round(float(f'{middle_s:.1f}') * 1000)}'", timeout=30_000)
    assert viewer.evaluate(CANVAS_DIFFERENCE, _png_url(before)) < SAME_MAX
    # Played from the middle at four times the speed, it ends on the marker.
    viewer.get_by_label("Speed").select_option("4")
    viewer.get_by_role("button", name="Play").click()
    viewer.wait_for_selector('[data-player][data-state="ended"]', timeout=30_000)
    assert player.get_attribute("data-position") == str(end_ms) or \
        abs(int(player.get_attribute("data-position") or 0) - end_ms) <= 1
    assert viewer.evaluate(CANVAS_DIFFERENCE, _png_url(after)) < SAME_MAX

    # On a phone, inside the embed page's frame rules (its link is all it takes): it plays.
    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    small = phone.new_page()
    small.goto(portal.url + recording_url + "?embed=1")
    small.wait_for_selector('[data-player][data-state="paused"]', timeout=30_000)
    small.get_by_role("button", name="Play").tap()
    small.wait_for_function("() => Number(document.querySelector('[data-player]').dataset.position) > 500",
                            timeout=30_000)
    box = small.locator(".player-screen canvas").bounding_box()
    assert box is not None
    assert box["width"] <= 390
    phone.close()

    # --- A curator publishes it as the exhibit's tour. ---
    curator = log_in(portal, browser)
    curator_token = next(cookie["value"] for cookie in curator.context.cookies()
                         if cookie["name"] == "csrftoken")
    published = curator.request.post(f"{portal.url}/api/exhibits/dos/tour",
                                     headers={"X-CSRFToken": curator_token,
                                              "Content-Type": "application/json"},
                                     data=json.dumps({"recording": recording_id}))
    assert published.status == 200, published.text()
    assert stranger.request.get(f"{portal.url}/api/exhibits/dos").json()["tour"] == recording_url

    # The exhibit page plays it, muted, by itself.
    waiting = stranger.new_page()
    waiting.goto(portal.url + "/exhibits/dos/")
    tour = waiting.get_by_role("region", name="A tour of this exhibit")
    waiting.wait_for_function("() => Number(document.querySelector('[data-player]').dataset.position) > 1000",
                              timeout=30_000)
    assert tour.get_attribute("data-muted") == "1"
    # The one machine is busy: this visitor waits in line, watching the tour.
    waiting.get_by_role("button", name="Start").click()
    waiting.wait_for_selector('#state[data-state="queued"]', timeout=15_000)
    assert waiting.locator("#queue-position").inner_text() == "number 1"
    line_tour = waiting.locator("#line-tour [data-player]")
    line_tour.wait_for(state="visible", timeout=10_000)
    waiting.wait_for_function(
        "() => Number(document.querySelector('#line-tour [data-player]').dataset.position) > 1000",
        timeout=30_000)
    assert waiting.locator("#queue-position").is_visible()
    assert waiting.evaluate("() => document.querySelector('#line-tour canvas').width") == 720

    # The recorded visit ends: the waiting visitor gets the machine and the tour goes.
    page.get_by_role("button", name="End").click()
    waiting.wait_for_selector('#state[data-state="running"]', timeout=60_000)
    waiting.locator("#line-tour").wait_for(state="hidden", timeout=10_000)
    waiting.get_by_role("button", name="End").click()

    # --- The WebM export: its length, and a late frame that shows the marker. ---
    video_url = f"{portal.url}/api/recordings/{recording_id}.webm"
    answer = viewer.request.get(video_url)
    assert answer.status in {200, 202}
    wait_until(lambda: viewer.request.get(video_url).status == 200, timeout_s=120, what="the WebM")
    video = portal.root / "export.webm"
    video.write_bytes(viewer.request.get(video_url).body())
    probe = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name", "-of", "json",
         str(video)], capture_output=True, check=True).stdout)
    assert probe["streams"][0]["codec_name"] == "vp8"
    assert abs(float(probe["format"]["duration"]) - recording["seconds"]) < 0.5
    frame = _rgb(video, at_s=recording["seconds"] - 0.5)
    marked, unmarked = _rgb(after), _rgb(before)
    assert frame.shape == marked.shape
    assert numpy.abs(frame - marked).mean() * 2 < numpy.abs(frame - unmarked).mean()

    # --- A damaged file (cut short on disk) is refused, never served. ---
    stored = next((portal.root / "images" / "recordings").glob(f"{recording_id}.rec"))
    stored.write_bytes(stored.read_bytes()[:-100])
    damaged = stranger.request.get(f"{portal.url}/api/recordings/{recording_id}")
    assert damaged.status == 409
    assert damaged.json()["error"] == "recording_damaged"
    assert stranger.request.get(f"{portal.url}/api/recordings/{recording_id}/segments/0").status == 409
    refused = stranger.new_page()
    refused.goto(portal.url + recording_url)
    assert "damaged" in refused.locator("#recording-problem").inner_text()
    assert refused.locator("[data-player]").count() == 0
