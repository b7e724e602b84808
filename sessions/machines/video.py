"""A recording's sound track and its WebM export, made by ffmpeg, confined.

Owns: `SoundTrack`, the recording's sound as Opus in Ogg (ffmpeg reading PCM on
its input; the silences QEMU sends nothing for filled in, so the track keeps
the recording's time), and `webm_export`: frames drawn on the server from the
recording's own updates (Raw pictures and size changes, `sessions.display.recording`)
at a steady rate, handed to ffmpeg (VP8, with the sound track's Opus), its
progress told as it goes. Each ffmpeg runs as Ghostscript does for prints:
no shell, limits on CPU time, address space and file size set before it
starts, a wall-clock timeout, killed and waited for when cancelled.

Must not: import Django, or hold more than a frame of the video in memory.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy

from sessions.display.recording import (
    ENCODING_DESKTOP_SIZE,
    ENCODING_RAW,
    RecordingIndex,
    segment_payload,
    segment_records,
)

logger = logging.getLogger(__name__)

FFMPEG = "ffmpeg"
SOUND_BITRATE = "48k"
# PCM waiting for ffmpeg beyond this is dropped (ffmpeg has stalled): the recording never waits.
SOUND_BACKLOG_BYTES = 4 * 1024 * 1024


class VideoError(Exception):
    """ffmpeg could not make the sound track or the video; the message says why."""


@dataclass(frozen=True)
class VideoLimits:
    timeout_s: float = 600.0
    cpu_s: int = 600
    memory_bytes: int = 1024 * 1024 * 1024
    output_bytes: int = 2 * 1024 * 1024 * 1024
    frames_per_s: float = 10.0
    ffmpeg: str = FFMPEG


def _ffmpeg_limits(limits: VideoLimits) -> Callable[[], None]:
    def setup() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return setup


async def _ffmpeg_start(argv: list[str], *, limits: VideoLimits, log: IO[bytes]
                        ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        limits.ffmpeg, "-hide_banner", "-loglevel", "error", *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=log,
        preexec_fn=_ffmpeg_limits(limits), start_new_session=True,
        env={"PATH": "/usr/bin:/bin"})


async def _stopped(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def _log_tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-600:].strip()
    return ""


# --- The sound track ----------------------------------------------------------------


class SoundTrack:
    """The recording's sound, PCM in, Ogg Opus out, its time kept with the recording's."""

    def __init__(self, path: Path, *, rate: int, channels: int, limits: VideoLimits) -> None:
        self.path, self.rate, self.channels, self.limits = path, rate, channels, limits
        self._frame_bytes = 2 * channels
        self._process: asyncio.subprocess.Process | None = None
        self._log_path = path.with_suffix(".log")
        self._written_frames = 0
        # Whether anything but silence was heard: a track of silence is not kept.
        self.heard = False

    async def open(self) -> None:
        with self._log_path.open("wb") as log:
            self._process = await _ffmpeg_start(
                ["-f", "s16le", "-ar", str(self.rate), "-ac", str(self.channels), "-i", "pipe:0",
                 "-c:a", "libopus", "-b:a", SOUND_BITRATE, "-f", "ogg", "-y", os.fspath(self.path)],
                limits=self.limits, log=log)

    def feed(self, at_s: float, pcm: bytes) -> None:
        """PCM that ended at `at_s` (seconds since the recording began)."""
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        whole = len(pcm) - len(pcm) % self._frame_bytes
        pcm = pcm[:whole]
        if not pcm:
            return
        if pcm.strip(b"\0"):
            self.heard = True
        began = at_s - whole // self._frame_bytes / self.rate
        self._silence_until(began)
        self._write(pcm)

    def _silence_until(self, at_s: float) -> None:
        gap = int(at_s * self.rate) - self._written_frames
        # Gaps shorter than 50 ms are QEMU's timer, not silence.
        if gap > self.rate // 20:
            self._write(b"\0" * gap * self._frame_bytes)

    def _write(self, data: bytes) -> None:
        process = self._process
        assert process is not None
        assert process.stdin is not None
        if process.stdin.transport.get_write_buffer_size() > SOUND_BACKLOG_BYTES:
            return
        process.stdin.write(data)
        self._written_frames += len(data) // self._frame_bytes

    async def close(self, *, end_s: float) -> bool:
        """The track to `end_s`; True when it is kept (something was heard and ffmpeg made it)."""
        process, self._process = self._process, None
        if process is None:
            return False
        try:
            if self.heard and process.stdin is not None:
                self._process = process
                self._silence_until(end_s)
                self._process = None
            assert process.stdin is not None
            process.stdin.close()
            async with asyncio.timeout(self.limits.timeout_s):
                await process.wait()
        except BaseException:
            await _stopped(process)
            raise
        finally:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
        kept = self.heard and process.returncode == 0 and self.path.exists()
        if not kept:
            self.path.unlink(missing_ok=True)
        return kept

    async def abandon(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            await _stopped(process)
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._log_path.unlink()


# --- Frames ---------------------------------------------------------------------------


class Screen:
    """The recorded display drawn from its updates (Raw pictures, size changes)."""

    def __init__(self, width: int, height: int) -> None:
        self.pixels = numpy.zeros((height, width, 4), dtype=numpy.uint8)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def apply(self, message: bytes) -> None:
        count = int.from_bytes(message[2:4], "big")
        offset = 4
        for _ in range(count):
            x, y, width, height, encoding = struct.unpack_from(">HHHHi", message, offset)
            offset += 12
            if encoding == ENCODING_RAW:
                length = width * height * 4
                block = numpy.frombuffer(message, dtype=numpy.uint8, count=length, offset=offset)
                self.pixels[y:y + height, x:x + width] = block.reshape(height, width, 4)[
                    :max(0, self.pixels.shape[0] - y), :max(0, self.pixels.shape[1] - x)]
                offset += length
            elif encoding == ENCODING_DESKTOP_SIZE:
                self.pixels = numpy.zeros((height, width, 4), dtype=numpy.uint8)


def _records(path: Path, index: RecordingIndex) -> Iterator[tuple[int, int, bytes]]:
    """(segment's number, time, message) of every record, in order."""
    for number, segment in enumerate(index.segments):
        for at_ms, message in segment_records(segment_payload(path, segment)):
            yield number, at_ms, message


def video_size(path: Path, index: RecordingIndex) -> tuple[int, int]:
    """The largest display in the recording: the video's size (even, as VP8 wants)."""
    width = max([segment.width for segment in index.segments] or [640])
    height = max([segment.height for segment in index.segments] or [480])
    for _number, _at, message in _records(path, index):
        count = int.from_bytes(message[2:4], "big")
        offset = 4
        for _ in range(count):
            _x, _y, rect_width, rect_height, encoding = struct.unpack_from(">HHHHi", message, offset)
            offset += 12
            if encoding == ENCODING_RAW:
                offset += rect_width * rect_height * 4
            elif encoding == ENCODING_DESKTOP_SIZE:
                width, height = max(width, rect_width), max(height, rect_height)
    return width + width % 2, height + height % 2


def frames(path: Path, index: RecordingIndex, *, frames_per_s: float, size: tuple[int, int]
           ) -> Iterator[bytes]:
    """The recording as frames of `size` (RGBX), the display centred on black."""
    width, height = size
    canvas = numpy.zeros((height, width, 4), dtype=numpy.uint8)
    total = max(1, int(index.duration_ms / 1000 * frames_per_s))
    records = _records(path, index)
    pending = next(records, None)
    screen: Screen | None = None
    segment_number = -1
    for number in range(total):
        at_ms = number * 1000 / frames_per_s
        while pending is not None and pending[1] <= at_ms:
            if pending[0] != segment_number:
                # A segment starts with the display's size and a full picture.
                segment_number = pending[0]
                segment = index.segments[segment_number]
                if screen is None or screen.size != (segment.width, segment.height):
                    screen = Screen(segment.width, segment.height)
            assert screen is not None
            screen.apply(pending[2])
            pending = next(records, None)
        canvas[:] = 0
        if screen is not None:
            shown_width, shown_height = screen.size
            shown_width, shown_height = min(shown_width, width), min(shown_height, height)
            left, top = (width - shown_width) // 2, (height - shown_height) // 2
            canvas[top:top + shown_height, left:left + shown_width] = \
                screen.pixels[:shown_height, :shown_width]
        yield canvas.tobytes()


async def webm_export(path: Path, index: RecordingIndex, target: Path, *, sound: Path | None,
                      limits: VideoLimits, progress: Callable[[float], Awaitable[None]]) -> None:
    """Write the recording as WebM (VP8, and Opus when it has sound) into `target`."""
    size = await asyncio.to_thread(video_size, path, index)
    seconds = index.duration_ms / 1000
    partial = target.with_name(target.name + ".part")
    log_path = target.with_suffix(".log")
    argv = ["-f", "rawvideo", "-pix_fmt", "rgb0", "-s", f"{size[0]}x{size[1]}",
            "-r", f"{limits.frames_per_s:g}", "-i", "pipe:0"]
    if sound is not None:
        argv += ["-i", os.fspath(sound)]
    argv += ["-map", "0:v"] + (["-map", "1:a", "-c:a", "copy"] if sound is not None else [])
    argv += ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-b:v", "1M",
             "-pix_fmt", "yuv420p", "-t", f"{seconds:.3f}", "-f", "webm", "-y", os.fspath(partial)]
    total = max(1, int(seconds * limits.frames_per_s))
    with log_path.open("wb") as log:
        process = await _ffmpeg_start(argv, limits=limits, log=log)
    try:
        assert process.stdin is not None
        async with asyncio.timeout(limits.timeout_s):
            drawn = frames(path, index, frames_per_s=limits.frames_per_s, size=size)
            for number, frame in enumerate(drawn, start=1):
                process.stdin.write(frame)
                await process.stdin.drain()
                if number % max(1, int(limits.frames_per_s)) == 0:
                    await progress(min(0.99, number / total))
            process.stdin.close()
            code = await process.wait()
    except (BrokenPipeError, ConnectionResetError) as error:
        await _stopped(process)
        partial.unlink(missing_ok=True)
        raise VideoError(f"ffmpeg stopped: {_log_tail(log_path) or error}") from error
    except TimeoutError as error:
        await _stopped(process)
        partial.unlink(missing_ok=True)
        raise VideoError("the video took too long to make") from error
    except BaseException:
        await _stopped(process)
        partial.unlink(missing_ok=True)
        raise
    finally:
        said = _log_tail(log_path)
        with contextlib.suppress(OSError):
            log_path.unlink()
    if code != 0:
        partial.unlink(missing_ok=True)
        raise VideoError(f"ffmpeg failed (exit {code}): {said}")
    os.replace(partial, target)
    await progress(1.0)
