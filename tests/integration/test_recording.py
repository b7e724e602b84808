"""Recording a real machine (the demo, with its AdLib) through the node: the sound
track beside the display, and a recording that outgrows its limit stopping by itself,
keeping what it has."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from portal.models import Exhibit, Recording
from sessions.display.audio import audio_format_for, audio_open
from sessions.display.recording import (
    ENCODING_DESKTOP_SIZE,
    recording_read,
    segment_payload,
    segment_records,
)
from sessions.node.recordings import recording_paths, recordings_expire
from tests.conftest import ExhibitFactory, visitor
from tests.integration.test_audio import F5, desktop_up, peak
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)


def _seconds(path: Path) -> float:
    probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration:stream=codec_name",
                            "-of", "json", str(path)], capture_output=True, check=True)
    answer = json.loads(probe.stdout)
    assert answer["streams"][0]["codec_name"] == "opus"
    return float(answer["format"]["duration"])


async def test_it_records_the_sound_and_stops_by_itself_at_its_size_limit(
        broker: Any, exhibit_create: ExhibitFactory, demo_image: Path) -> None:
    await exhibit_create(demo_image, slug="demo", boot="hdd")
    await Exhibit.objects.filter(slug="demo").aupdate(sound_adlib=True)
    browser = visitor()
    response = await browser.post("/api/exhibits/demo/sessions")
    assert response.status_code == 201
    session_id = response.json()["id"]
    rfb = await desktop_up(browser, session_id)
    events: list[dict[str, Any]] = []
    notify = broker.keeper.notify

    def told(sid: str, event: dict[str, Any]) -> None:
        events.append(event)
        notify(sid, event)

    broker.keeper.notify = told

    # Through the API: a visitor may record only where the exhibit allows it; one at a time.
    api_path = f"/api/sessions/{session_id}/recording"
    refused = await browser.post(api_path)
    assert refused.status_code == 403
    assert refused.json()["error"] == "recording_not_allowed"
    await Exhibit.objects.filter(slug="demo").aupdate(visitors_may_record=True)
    visit = broker.keeper.visit(session_id)
    begun = await browser.post(api_path)
    assert begun.status_code == 201, begun.content
    assert (await browser.post(api_path)).json()["error"] == "recording_exists"
    ended = await browser.delete(api_path)
    assert ended.status_code == 200
    assert ended.json()["url"] == f"/recordings/{begun.json()['id']}/"
    assert (await browser.delete(api_path)).json()["error"] == "not_recording"
    assert (await visitor().post(api_path)).status_code == 404

    # The desktop plays a tune (F5, the PC speaker): the recording has it as Opus.
    started = await broker.recordings.start(session_id=session_id, owner="someone", by_staff=True)
    machine = broker.machine(session_id)
    listener = await audio_open(machine.vnc_path, audio_format_for(("pcspk", "adlib")), timeout_s=10)
    await rfb.press(F5)
    # The tune heard beside the recorder, a second of it (the recorder hears it as it plays).
    heard_bytes = 0
    async with asyncio.timeout(10):
        async for pcm in listener.chunks():
            if heard_bytes or peak(pcm) > 1000:
                heard_bytes += len(pcm)
            if heard_bytes >= 44100 * 2:
                break
    listener.close()
    stopped = await broker.recordings.stop(session_id=session_id)
    assert stopped["id"] == started["id"]
    row = await Recording.objects.aget(pk=started["id"])
    assert row.sound
    assert row.by_staff
    assert row.expires_at is None
    store = broker.recordings.config.store
    path, sound, _video = recording_paths(store, row.id)
    assert abs(_seconds(sound) - row.seconds) < 0.3
    # The player's <audio> seeks by ranges.
    part = await browser.get(f"/api/recordings/{row.id}/sound.ogg", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206
    assert part.content == sound.read_bytes()[:100]
    assert part["Content-Range"] == f"bytes 0-99/{sound.stat().st_size}"
    assert recording_read(path).duration_ms == round(row.seconds * 1000) or \
        abs(recording_read(path).duration_ms - row.seconds * 1000) <= 1

    # A reset gives the visit a new machine: the recording goes on from it, at a new full picture.
    third = await broker.recordings.start(session_id=session_id, owner="someone", by_staff=False)
    await rfb.close()
    exhibit = await Exhibit.objects.select_related("image").aget(slug="demo")
    await broker.session_reset(session_id=session_id, exhibit=exhibit)
    reset_done = (await Recording.objects.aget(pk=third["id"])).started_at
    rfb = await desktop_up(browser, session_id)
    await rfb.press(F5)
    stopped = await broker.recordings.stop(session_id=session_id)
    index = recording_read(recording_paths(store, third["id"])[0])
    assert len(index.segments) >= 2
    assert reset_done is not None
    # After the reset: the new machine, to the recording's end, showing the desktop (a new
    # machine may start in the BIOS's text mode: then its segment switches to 640x480).
    last = index.segments[-1]
    assert last.end_ms >= index.duration_ms - 1000
    switched = [struct.unpack_from(">HHHHi", message, 4)[2:] for _at, message
                in segment_records(segment_payload(recording_paths(store, third["id"])[0], last))
                if len(message) >= 16]
    assert last.width == 640 or (640, 480, ENCODING_DESKTOP_SIZE) in switched

    # Past their time, recordings go with their files (the reaper's pass).
    await Recording.objects.filter(pk=third["id"]).aupdate(expires_at=timezone.now())
    assert await sync_to_async(recordings_expire)(store, max_s=60) >= 1
    assert not recording_paths(store, third["id"])[0].exists()
    assert not await Recording.objects.filter(pk=third["id"]).aexists()

    # A recording over its size stops by itself, keeps what it has, and the page is told why.
    limits = dataclasses.replace(broker.recordings.config.limits, max_bytes=200_000, keyframe_s=0.5)
    broker.recordings.config = dataclasses.replace(broker.recordings.config, limits=limits)
    second = await broker.recordings.start(session_id=session_id, owner="someone", by_staff=False)

    async def kept() -> bool:
        return await Recording.objects.filter(pk=second["id"], state=Recording.State.KEPT).aexists()

    await eventually(kept, timeout_s=30)
    row = await Recording.objects.aget(pk=second["id"])
    assert row.stopped_reason == "size"
    assert row.expires_at is not None
    index = recording_read(recording_paths(store, row.id)[0])
    assert index.segments
    assert index.segments[0].width == 640
    assert {"type": "recording", "state": "stopped", "reason": "size"}.items() <= events[-1].items()
    assert visit.recording is None
    await rfb.close()
