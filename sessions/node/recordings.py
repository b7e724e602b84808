"""Recordings of this node's visits, from start to a kept file; and the kept ones'
lives: their exports and their deletion.

Owns: a visit's recording while it is made (`Visit.recording`: the recorder's
task, its file and sound track; it outlives a reset, the recorder connecting to
the new machine), stopping it (its maker's Stop, a limit, the visit's end),
the row (`portal.models.Recording`) from its start to `kept`, the pages'
events (`recording` with `started` or `stopped`, and why), a visitor's
recording's time to live (an hour after the visit), deleting the expired ones
(`recordings_expire`, from the broker's reaper loop), and WebM exports in the
background, one at a time on this node.

Must not: decide who may record (the web edge does), start or end machines, or
change a visit's phase.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.utils import timezone

from portal.models import RECORDING_SUFFIXES, Recording
from sessions.display.audio import audio_format_for
from sessions.display.recording import (
    RecordingDamagedError,
    RecordingError,
    RecordingIndex,
    recording_read,
)
from sessions.errors import SessionError, gettext_noop
from sessions.machines.recorder import RecorderError, RecorderOptions, RecorderProcess
from sessions.machines.video import VideoError, webm_export
from sessions.node.config import RecordingConfig
from sessions.node.keeper import Keeper
from sessions.node.visit import Phase, Visit
from sessions.tasks import task_new

logger = logging.getLogger(__name__)

MACHINE_POLL_S = 0.2


class RecordingExistsError(SessionError):
    code = "recording_exists"
    status = 409

    def __init__(self) -> None:
        super().__init__(gettext_noop("This visit is being recorded already."))


class NotRecordingError(SessionError):
    code = "not_recording"
    status = 409

    def __init__(self) -> None:
        super().__init__(gettext_noop("This visit is not being recorded."))


class RecordingUnavailableError(SessionError):
    code = "recording_unavailable"
    status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(gettext_noop("The recording could not be made: %(reason)s"), reason=reason)


class RecordingNotFoundError(SessionError):
    code = "not_found"
    status = 404

    def __init__(self) -> None:
        super().__init__(gettext_noop("There is no such recording."))


class RecordingDamagedFileError(SessionError):
    """The file is not whole: it is never served."""

    code = "recording_damaged"
    status = 409

    def __init__(self) -> None:
        super().__init__(gettext_noop("This recording is damaged and cannot be played."))


def recording_paths(store: Path, recording_id: str) -> tuple[Path, Path, Path]:
    """The recording's file, its sound track and its video, in the store."""
    recording, sound, video = RECORDING_SUFFIXES
    return (store / f"{recording_id}{recording}", store / f"{recording_id}{sound}",
            store / f"{recording_id}{video}")


def recording_json(row: Recording) -> dict[str, Any]:
    """The API's Recording (docs/api.md), with this portal's extensions."""
    return {
        "id": row.id, "exhibit": row.exhibit.slug, "seconds": round(row.seconds, 3), "bytes": row.bytes,
        "url": row.url, "state": row.state, "started_at": row.started_at.isoformat(),
        "stopped_reason": row.stopped_reason or None, "sound": row.sound,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "export": {"state": row.export_state or None, "progress": round(row.export_progress, 3),
                   "url": f"/api/recordings/{row.id}.webm"},
    }


@dataclass
class _Making:
    """A recording being made."""

    row: Recording
    recorder: RecorderProcess
    path: Path
    sound_path: Path
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    finished: bool = False


class Recordings:
    """The recordings of the keeper's visits, and the kept ones' exports."""

    def __init__(self, keeper: Keeper, *, config: RecordingConfig) -> None:
        self._keeper = keeper
        self.config = config
        self._exports: dict[str, asyncio.Task[None]] = {}
        self._export_gate = asyncio.Semaphore(1)
        # Checked recordings by (path, size, mtime): a file is read whole once per change.
        self._checked: dict[tuple[str, int, int], RecordingIndex] = {}
        # Recordings that stopped by themselves, being finished.
        self._finishing: set[asyncio.Task[Recording]] = set()
        keeper.end_hooks.append(self.visit_ending)

    # --- making one -----------------------------------------------------------------

    async def start(self, *, session_id: str, owner: str, by_staff: bool) -> dict[str, Any]:
        visit = self._keeper.require(session_id, Phase.RUNNING, Phase.RESETTING, Phase.RESTORING)
        if visit.recording is not None:
            raise RecordingExistsError()
        store = self.config.store
        recording_id = secrets.token_urlsafe(24)
        path, sound_path, _video = recording_paths(store, recording_id)
        sound_format = audio_format_for(tuple(visit.exhibit.machine_profile().sound)) \
            if visit.exhibit is not None else None
        recorder = RecorderProcess(RecorderOptions(
            path=path.with_name(path.name + ".part"),
            meta={"exhibit": getattr(visit.exhibit, "slug", ""), "pixel_format": "rgbx32"},
            limits=self.config.limits,
            sound=(sound_format.channels, sound_format.rate) if sound_format is not None else None,
            sound_path=sound_path.with_name(sound_path.name + ".part"), video=self.config.video))
        row = Recording(id=recording_id, exhibit=visit.exhibit, session_id=session_id, owner=owner,
                        by_staff=by_staff)
        making = _Making(row=row, recorder=recorder, path=path, sound_path=sound_path)
        # Taken before the first await: a second start meanwhile is refused.
        visit.recording = making
        try:
            await asyncio.to_thread(store.mkdir, parents=True, exist_ok=True)
            await recorder.start()
            await row.asave(force_insert=True)
            if (machine := self._keeper.machine(session_id)) is not None:
                recorder.machine(machine.vnc_path)
        except BaseException as error:
            visit.recording = None
            with contextlib.suppress(RecorderError, OSError, TimeoutError, AssertionError):
                await recorder.stop(timeout_s=5)
            for leftover in (recorder.options.path, recorder.log_path, recorder.options.sound_path):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            if isinstance(error, (OSError, RecorderError)):
                raise RecordingUnavailableError(str(error)) from error
            raise
        making.task = task_new(self._follow(visit, making), name=f"recording-{recording_id}")
        self._keeper.notify(session_id, {"type": "recording", "state": "started",
                                         "recording": self._json(row)})
        return {"id": row.id, "started_at": row.started_at.isoformat()}

    async def _follow(self, visit: Visit, making: _Making) -> None:
        """Tell the recorder which machine the visit has (a reset gives it another), until
        the recorder stops by itself (a limit), which the page is told."""
        machine = self._keeper.machine(visit.session_id)
        told: Path | None = machine.vnc_path if machine is not None else None
        answered = making.recorder.answered
        while not answered.done():
            machine = self._keeper.machine(visit.session_id)
            if machine is not None and machine.vnc_path != told:
                told = machine.vnc_path
                making.recorder.machine(told)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(MACHINE_POLL_S):
                    await asyncio.shield(answered)
        if visit.recording is making:
            # It stopped by itself (a limit, or it failed), keeping what it has.
            finishing = task_new(self._finish(visit, making), name=f"recording-finish-{making.row.id}")
            self._finishing.add(finishing)
            finishing.add_done_callback(self._finishing.discard)

    async def stop(self, *, session_id: str) -> dict[str, Any]:
        visit = self._keeper.require(session_id, Phase.RUNNING, Phase.RESETTING, Phase.RESTORING)
        making = visit.recording
        if not isinstance(making, _Making):
            raise NotRecordingError()
        row = await self._finish(visit, making)
        return {"id": row.id, "seconds": round(row.seconds, 3), "bytes": row.bytes, "url": row.url}

    async def _finish(self, visit: Visit, making: _Making) -> Recording:
        if visit.recording is making:
            visit.recording = None
        row = making.row
        if making.finished:
            return row
        making.finished = True
        task = making.task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            answer = await making.recorder.stop()
        except (RecorderError, OSError, TimeoutError) as error:
            logger.error("recording %s failed: %s", row.id, error)
            answer = {"duration_ms": 0, "sound": False, "stopped": None, "failed": True}
        sound_kept = bool(answer.get("sound"))
        part = making.recorder.options.path
        sound_part = making.recorder.options.sound_path
        if answer.get("failed"):
            # Nothing whole to keep: the row goes, and its files.
            for leftover in (part, sound_part):
                if leftover is not None:
                    leftover.unlink(missing_ok=True)
            if row.pk and await Recording.objects.filter(pk=row.pk).aexists():
                await row.adelete()
            self._keeper.notify(visit.session_id, {"type": "recording", "state": "stopped",
                                                   "reason": "failed", "recording": None})
            return row
        if sound_kept and sound_part is not None:
            await asyncio.to_thread(os.replace, sound_part, making.sound_path)
        elif sound_part is not None:
            sound_part.unlink(missing_ok=True)
        await asyncio.to_thread(os.replace, part, making.path)
        size = making.path.stat().st_size + (making.sound_path.stat().st_size if sound_kept else 0)
        row.state = Recording.State.KEPT
        row.seconds = int(answer["duration_ms"]) / 1000
        row.bytes = size
        row.sound = sound_kept
        row.stopped_reason = answer.get("stopped") or ""
        if not row.by_staff:
            row.expires_at = timezone.now() + datetime.timedelta(seconds=self.config.visitor_keep_s)
        await row.asave()
        self._keeper.notify(visit.session_id, {"type": "recording", "state": "stopped",
                                               "reason": row.stopped_reason or None,
                                               "recording": self._json(row)})
        return row

    def _json(self, row: Recording) -> dict[str, Any]:
        return recording_json(row)

    async def visit_ending(self, visit: Visit) -> None:
        """The visit's recording stops with it; its visitor's recordings are kept an hour from now."""
        making = visit.recording
        if isinstance(making, _Making):
            try:
                await self._finish(visit, making)
            except (OSError, RecordingError) as error:
                logger.error("recording %s could not be finished: %s", making.row.id, error)
        expires = timezone.now() + datetime.timedelta(seconds=self.config.visitor_keep_s)
        await Recording.objects.filter(session_id=visit.session_id, by_staff=False).aupdate(
            expires_at=expires)

    def recording_status(self, *, session_id: str) -> dict[str, Any] | None:
        """The visit's recording being made, if any (for its page)."""
        visit = self._keeper.visit(session_id)
        making = visit.recording if visit is not None else None
        if not isinstance(making, _Making):
            return None
        return {"id": making.row.id, "started_at": making.row.started_at.isoformat()}

    async def shutdown(self) -> None:
        await asyncio.gather(*self._finishing, return_exceptions=True)
        for visit in self._keeper.visits():
            if isinstance(visit.recording, _Making):
                with contextlib.suppress(OSError, RecordingError):
                    await self._finish(visit, visit.recording)
        for task in list(self._exports.values()):
            task.cancel()
        for task in list(self._exports.values()):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- kept ones ------------------------------------------------------------------

    async def index(self, row: Recording) -> RecordingIndex:
        """The kept recording's checked index; RecordingDamagedFileError for a file not whole."""
        if row.state != Recording.State.KEPT:
            raise RecordingNotFoundError()
        path = recording_paths(self.config.store, row.id)[0]
        try:
            status = await asyncio.to_thread(path.stat)
        except FileNotFoundError as error:
            raise RecordingNotFoundError() from error
        key = (os.fspath(path), status.st_size, status.st_mtime_ns)
        checked = self._checked.get(key)
        if checked is not None:
            return checked
        try:
            checked = await asyncio.to_thread(recording_read, path)
        except RecordingDamagedError as error:
            logger.warning("recording %s refused: %s", row.id, error)
            raise RecordingDamagedFileError() from error
        except FileNotFoundError as error:
            raise RecordingNotFoundError() from error
        if len(self._checked) > 256:
            self._checked.clear()
        self._checked[key] = checked
        return checked

    async def export_start(self, row: Recording) -> None:
        """Make the recording's WebM in the background (once; again after a failure)."""
        if row.id in self._exports or row.export_state == Recording.Export.DONE:
            return
        video = recording_paths(self.config.store, row.id)[2]
        partial = video.with_name(video.name + ".part")
        if row.export_state == Recording.Export.RUNNING and not await asyncio.to_thread(
                _export_abandoned, partial):
            return  # being made, here or on another node
        index = await self.index(row)
        # Made at once, and written to as the video grows: what tells every node it is being made.
        await asyncio.to_thread(partial.touch)
        row.export_state, row.export_progress, row.export_detail = Recording.Export.RUNNING, 0.0, ""
        await Recording.objects.filter(pk=row.pk).aupdate(export_state=row.export_state,
                                                         export_progress=0.0, export_detail="")
        task = task_new(self._export(row, index), name=f"recording-export-{row.id}")
        self._exports[row.id] = task
        task.add_done_callback(lambda _done: self._exports.pop(row.id, None))

    async def _export(self, row: Recording, index: RecordingIndex) -> None:
        path, sound, video = recording_paths(self.config.store, row.id)
        last = [0.0]

        async def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.05 or fraction >= 1.0:
                last[0] = fraction
                await Recording.objects.filter(pk=row.pk).aupdate(export_progress=fraction)

        async with self._export_gate:
            try:
                await webm_export(path, index, video, sound=sound if row.sound else None,
                                  limits=self.config.video, progress=progress)
            except (VideoError, OSError, RecordingDamagedError) as error:
                logger.warning("recording %s: the export failed: %s", row.id, error)
                await Recording.objects.filter(pk=row.pk).aupdate(
                    export_state=Recording.Export.FAILED, export_detail=str(error)[:300])
                return
        await Recording.objects.filter(pk=row.pk).aupdate(export_state=Recording.Export.DONE,
                                                         export_progress=1.0)


# An export whose partial video has not grown for this long was abandoned (its node died).
EXPORT_ABANDONED_S = 120.0


def _export_abandoned(partial: Path) -> bool:
    try:
        return time.time() - partial.stat().st_mtime > EXPORT_ABANDONED_S
    except FileNotFoundError:
        return True


def recordings_expire(store: Path, *, max_s: float, now: datetime.datetime | None = None) -> int:
    """Delete the recordings past their time (visitors' an hour after their visit), and
    those a portal that died never finished (still "recording" well past the longest
    a recording lasts), with their files. Returns how many went."""
    now = now or timezone.now()
    unfinished = now - datetime.timedelta(seconds=max_s + 600)
    gone = 0
    expired = Recording.objects.filter(expires_at__lt=now) | Recording.objects.filter(
        state=Recording.State.RECORDING, started_at__lt=unfinished)
    for recording_id in list(expired.values_list("id", flat=True)):
        for path in recording_paths(store, recording_id):
            for suffix in ("", ".part", ".part.log"):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
        Recording.objects.filter(pk=recording_id).delete()
        gone += 1
    return gone
