"""The recorder: a process of its own that records one visit's display (and sound)
into a recording file, told by its parent which machine to record and when to stop.

Owns: `RecorderProcess`, the parent's handle (started without a shell, its input
a pipe of JSON lines, its output read for its one answer, its errors in a log
file beside the recording, killed and waited for if it does not stop in time),
and the child's side (`python -m sessions.machines.recorder`): the recording file
(`sessions.display.recording`), the sound track (`sessions.machines.video`), the
connection to whichever machine the parent names (`{"vnc": path}`: after a reset,
the new machine's), the length limit, and the end: at `{"stop": true}`, at its
input's end, or at a limit, the file is made whole and the child answers
`{"stopped": null|"size"|"length", "duration_ms", "sound"}`.

Why a process: the portal relays every visitor's display in one event loop;
the recorder's work (a full picture read and compressed every few seconds, the
sound piped to ffmpeg) stays out of it, and a recorder that fails takes nothing
else with it.

Must not: import Django, or know about visits.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import sys
from pathlib import Path
from typing import IO, Any

from sessions.display.recording import (
    STOP_LENGTH,
    Recorder,
    RecorderLimits,
    RecordingError,
    RecordingWriter,
)
from sessions.machines.video import SoundTrack, VideoLimits

# The recorder's address space: a full picture, the compressor, Python.
MEMORY_BYTES = 1024 * 1024 * 1024
STOP_TIMEOUT_S = 30.0


class RecorderError(Exception):
    """The recorder could not be started, or did not answer."""


@dataclasses.dataclass
class RecorderOptions:
    path: Path
    meta: dict[str, Any]
    limits: RecorderLimits
    sound: tuple[int, int] | None = None
    sound_path: Path | None = None
    video: VideoLimits = dataclasses.field(default_factory=VideoLimits)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "sessions.machines.recorder", os.fspath(self.path),
                "--meta", json.dumps(self.meta), "--limits", json.dumps(dataclasses.asdict(self.limits)),
                *(["--sound", f"{self.sound[0]},{self.sound[1]}",
                   "--sound-path", os.fspath(self.sound_path)]
                  if self.sound is not None and self.sound_path is not None else []),
                "--video", json.dumps(dataclasses.asdict(self.video))]


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class RecorderProcess:
    """The parent's side: start, name machines, stop; `answer` is the child's one answer."""

    def __init__(self, options: RecorderOptions) -> None:
        self.options = options
        self.log_path = options.path.with_name(options.path.name + ".log")
        self._process: asyncio.subprocess.Process | None = None
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self._process = await asyncio.create_subprocess_exec(
                *self.options.argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=log, start_new_session=True,
                cwd=Path(__file__).resolve().parent.parent.parent)
        self._answer = asyncio.get_running_loop().create_future()
        # Ready once its file is open: what it is told from then on is recorded.
        assert self._process.stdout is not None
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                ready = await self._process.stdout.readline()
        except TimeoutError:
            ready = b""
        if not ready.startswith(b'{"ready"'):
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
            await self._process.wait()
            said = ""
            with contextlib.suppress(OSError):
                said = self.log_path.read_text(errors="replace")[-600:]
            raise RecorderError(f"the recorder did not start: {said.strip()}")
        self._reader = asyncio.create_task(self._read(), name=f"recorder-{self.options.path.name}")

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stdout is not None
        assert self._answer is not None
        answer: dict[str, Any] = {}
        with contextlib.suppress(ValueError, OSError):
            line = await self._process.stdout.readline()
            answer = json.loads(line) if line else {}
        if not self._answer.done():
            self._answer.set_result(answer)

    @property
    def answered(self) -> asyncio.Future[dict[str, Any]]:
        assert self._answer is not None
        return self._answer

    def _say(self, message: dict[str, Any]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.stdin.is_closing():
            return
        process.stdin.write(json.dumps(message).encode() + b"\n")

    def machine(self, vnc_path: Path) -> None:
        """Record this machine's display from now on."""
        self._say({"vnc": os.fspath(vnc_path)})

    async def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> dict[str, Any]:
        """Stop it (if it has not stopped by itself) and return its answer."""
        process = self._process
        assert process is not None
        assert process.stdin is not None
        self._say({"stop": True})
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            async with asyncio.timeout(timeout_s):
                answer = await self.answered
                await process.wait()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise
        finally:
            if self._reader is not None:
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
        if process.returncode != 0 or "duration_ms" not in answer:
            said = ""
            with contextlib.suppress(OSError):
                said = self.log_path.read_text(errors="replace")[-600:]
            raise RecorderError(f"the recorder failed (exit {process.returncode}): {said.strip()}")
        with contextlib.suppress(OSError):
            self.log_path.unlink()
        return answer


# --- The child -------------------------------------------------------------------------


async def _commands(machines: asyncio.Queue[Path | None]) -> None:
    """The parent's lines: a machine to record, or stop (also at the input's end)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if message.get("stop"):
            break
        if isinstance(message.get("vnc"), str):
            machines.put_nowait(Path(message["vnc"]))
    machines.put_nowait(None)


async def _record(recorder: Recorder, machines: asyncio.Queue[Path | None]) -> None:
    """Record each machine named, until told to stop or a limit is reached."""
    while (vnc_path := await machines.get()) is not None:
        running = asyncio.create_task(recorder.run(vnc_path))
        told = asyncio.create_task(machines.get())
        await asyncio.wait({running, told}, return_when=asyncio.FIRST_COMPLETED)
        if told.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, RecordingError, OSError):
                await running
            machines.put_nowait(told.result())  # the next machine, or the stop
            # A queue of one: what was put back is read at the loop's head.
            continue
        told.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await told
        try:
            running.result()
        except RecordingError as error:
            print(f"recording: {error}", file=sys.stderr)
        if recorder.stopped is not None:
            return


async def child_main(options: RecorderOptions, out: IO[str]) -> None:
    # Its own limits, set here rather than between fork and exec, so that starting it
    # costs the portal's process a spawn, not a fork.
    _limits()
    writer = RecordingWriter(path=options.path, meta=options.meta)
    writer.open()
    track: SoundTrack | None = None
    if options.sound is not None and options.sound_path is not None:
        channels, rate = options.sound
        track = SoundTrack(options.sound_path, rate=rate, channels=channels, limits=options.video)
        try:
            await track.open()
        except OSError as error:
            print(f"no sound track: {error}", file=sys.stderr)
            track = None
    recorder = Recorder(writer, options.limits, sound=options.sound,
                        on_sound=track.feed if track is not None else None)
    recorder.begin()
    out.write('{"ready": true}\n')
    out.flush()
    machines: asyncio.Queue[Path | None] = asyncio.Queue()
    commands = asyncio.create_task(_commands(machines))
    try:
        async with asyncio.timeout(options.limits.max_s):
            await _record(recorder, machines)
    except TimeoutError:
        recorder.stopped = STOP_LENGTH
    finally:
        commands.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await commands
    duration_ms = recorder.elapsed_ms()
    sound = await track.close(end_s=duration_ms / 1000) if track is not None else False
    writer.close(duration_ms=duration_ms, extra={"sound": sound})
    out.write(json.dumps({"stopped": recorder.stopped, "duration_ms": duration_ms, "sound": sound}) + "\n")
    out.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--meta", type=json.loads, default={})
    parser.add_argument("--limits", type=json.loads, default={})
    parser.add_argument("--sound", default="")
    parser.add_argument("--sound-path", type=Path)
    parser.add_argument("--video", type=json.loads, default={})
    arguments = parser.parse_args(argv)
    sound = tuple(int(value) for value in arguments.sound.split(",")) if arguments.sound else None
    options = RecorderOptions(path=arguments.path, meta=arguments.meta,
                              limits=RecorderLimits(**arguments.limits),
                              sound=(sound[0], sound[1]) if sound else None,
                              sound_path=arguments.sound_path, video=VideoLimits(**arguments.video))
    asyncio.run(child_main(options, sys.stdout))


if __name__ == "__main__":
    main()
