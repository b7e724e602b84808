"""A machine's display recorded from an RFB connection of the portal's own, and
the recording's file: written in segments that each decode on their own, read
back only when whole.

Owns: the recorder's connection to a machine's VNC socket (shared, beside the
visitor's displays, whose streams it never touches), what it asks QEMU for
(noVNC's pixel format, the Raw encoding and the desktop size only, so no
compression state is carried from one update to the next; a full-screen update
asked for every `keyframe_s`), the recording file (`RecordingWriter`: a header,
segments each starting at a full-screen update and compressed by a gzip member
of its own, an index at the end) and checking a file before anything of it is
served (`recording_read`: a file without its index, or whose segments do not
match it, is refused).

Must not: import Django, know about visits or visitors, or hold more than one
segment's compressor and one update in memory.

Why this shape: a player that seeks starts at the keyframe before the time
asked for and feeds noVNC everything from there; with a compressed encoding
whose state runs across updates (ZRLE, Tight, Zlib) that would need every
update since the start. The pixels are compressed by the file instead, a
segment at a time, and served to browsers as they are stored
(`Content-Encoding: gzip`), so a browser inflates them natively.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from sessions.display.greeting import rfb_greet

MAGIC = b"PORTALREC\x01"
SEGMENT_MAGIC = b"SEG1"
FOOTER_MAGIC = b"PREC"
# A segment's header: magic, start and end (ms from the recording's start),
# the display's width and height at its start, the payload's length and CRC-32.
_SEGMENT_HEADER = struct.Struct(">4sIIHHII")
# A record in a segment's payload: its time (ms) and the server message's length.
RECORD_HEADER = struct.Struct(">II")
# The end of a whole file: the index's offset and length, its CRC-32, the magic.
_FOOTER = struct.Struct(">QII4s")

# RFB (RFC 6143), as QEMU's VNC server speaks it.
ENCODING_RAW = 0
ENCODING_DESKTOP_SIZE = -223
ENCODING_QEMU_AUDIO = -259
_SET_PIXEL_FORMAT, _SET_ENCODINGS, _UPDATE_REQUEST = 0, 2, 3
_UPDATE, _COLOUR_MAP, _BELL, _CUT_TEXT, _QEMU = 0, 1, 2, 3, 255
# noVNC's own pixel format (32 bits, depth 24, little-endian, true colour, red at
# bit 0, green 8, blue 16): what is recorded is what the player's noVNC draws as is.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 0, 8, 16)
BYTES_PER_PIXEL = 4
# A rectangle larger than QEMU's largest display is nothing a machine sends.
DISPLAY_MAX = 4096
AUDIO_MESSAGE_MAX_BYTES = 1024 * 1024
COMPRESSION_LEVEL = 1


class RecordingError(Exception):
    """A recording cannot be made from this connection, or a file is not a whole recording."""


class RecordingDamagedError(RecordingError):
    """The file is not a whole recording (truncated, or changed on disk)."""


# --- The file ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """One segment: where its payload is in the file, its times and the display's size at its start."""

    offset: int
    length: int
    start_ms: int
    end_ms: int
    width: int
    height: int
    crc: int

    def as_list(self) -> list[int]:
        return [self.offset, self.length, self.start_ms, self.end_ms, self.width, self.height, self.crc]


@dataclass
class RecordingWriter:
    """Writes a recording, a segment at a time; `close` writes the index that makes it whole.

    `on_segment` is told each segment's size as it closes. The file is written at
    `path` and is a recording only once closed (a reader refuses it before).
    """

    path: Path
    meta: dict[str, Any]
    segments: list[Segment] = field(default_factory=list)
    bytes_written: int = 0
    _file: BinaryIO | None = None
    _compressor: Any = None
    _segment_offset: int = 0
    _segment_start_ms: int = 0
    _segment_end_ms: int = 0
    _segment_size: tuple[int, int] = (0, 0)
    _segment_crc: int = 0
    _segment_length: int = 0

    def open(self) -> None:
        self._file = self.path.open("wb")
        header = json.dumps(self.meta, separators=(",", ":")).encode()
        self._write(MAGIC + struct.pack(">I", len(header)) + header)

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self.bytes_written += len(data)

    @property
    def in_segment(self) -> bool:
        return self._compressor is not None

    def segment_start(self, *, at_ms: int, width: int, height: int) -> None:
        """A new segment: what comes next must be a full-screen update."""
        self.segment_end()
        assert self._file is not None
        self._segment_offset = self._file.tell()
        self._write(_SEGMENT_HEADER.pack(SEGMENT_MAGIC, at_ms, at_ms, width, height, 0, 0))
        self._compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, 31)
        self._segment_start_ms = self._segment_end_ms = at_ms
        self._segment_size = (width, height)
        self._segment_crc = 0
        self._segment_length = 0

    def record(self, at_ms: int, message: bytes) -> None:
        """One server message (an update) at its time, into the open segment."""
        assert self._compressor is not None
        self._payload(self._compressor.compress(RECORD_HEADER.pack(at_ms, len(message))))
        self._payload(self._compressor.compress(message))
        self._segment_end_ms = max(self._segment_end_ms, at_ms)

    def mark(self, at_ms: int) -> None:
        """Time passes with nothing new on the screen: the segment lasts until then."""
        if self._compressor is not None:
            self._segment_end_ms = max(self._segment_end_ms, at_ms)

    def _payload(self, data: bytes) -> None:
        if data:
            self._write(data)
            self._segment_crc = zlib.crc32(data, self._segment_crc)
            self._segment_length += len(data)

    def segment_end(self) -> None:
        if self._compressor is None:
            return
        assert self._file is not None
        self._payload(self._compressor.flush(zlib.Z_FINISH))
        self._compressor = None
        end = self._file.tell()
        self._file.seek(self._segment_offset)
        width, height = self._segment_size
        self._file.write(_SEGMENT_HEADER.pack(SEGMENT_MAGIC, self._segment_start_ms, self._segment_end_ms,
                                              width, height, self._segment_length, self._segment_crc))
        self._file.seek(end)
        self.segments.append(Segment(self._segment_offset + _SEGMENT_HEADER.size, self._segment_length,
                                     self._segment_start_ms, self._segment_end_ms, width, height,
                                     self._segment_crc))

    def close(self, *, duration_ms: int, extra: dict[str, Any] | None = None) -> None:
        """End the last segment and write the index: the file is a whole recording from now."""
        if self._file is None:
            return
        self.segment_end()
        index = json.dumps({"duration_ms": duration_ms, **(extra or {}),
                            "segments": [segment.as_list() for segment in self.segments]},
                           separators=(",", ":")).encode()
        offset = self._file.tell()
        self._write(index + _FOOTER.pack(offset, len(index), zlib.crc32(index), FOOTER_MAGIC))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None

    def abandon(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class RecordingIndex:
    """A whole recording as its index says, checked against the file."""

    meta: dict[str, Any]
    duration_ms: int
    segments: tuple[Segment, ...]
    extra: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"duration_ms": self.duration_ms,
                "segments": [{"start_ms": segment.start_ms, "end_ms": segment.end_ms,
                              "width": segment.width, "height": segment.height}
                             for segment in self.segments]}


def recording_read(path: Path, *, check_payloads: bool = True) -> RecordingIndex:
    """The recording's index, once the file is checked: its footer and index, each
    segment's header against the index and (with `check_payloads`) each payload's
    CRC. Raises RecordingDamagedError for anything that does not match, FileNotFoundError."""
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        head = handle.read(len(MAGIC) + 4)
        if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC) or size < _FOOTER.size:
            raise RecordingDamagedError("not a recording")
        meta_length = int.from_bytes(head[len(MAGIC):], "big")
        if meta_length > 64 * 1024:
            raise RecordingDamagedError("the header is too long")
        try:
            meta = json.loads(handle.read(meta_length))
        except ValueError as error:
            raise RecordingDamagedError("the header is damaged") from error
        handle.seek(size - _FOOTER.size)
        offset, length, crc, magic = _FOOTER.unpack(handle.read(_FOOTER.size))
        if magic != FOOTER_MAGIC or offset + length + _FOOTER.size != size:
            raise RecordingDamagedError("the recording has no index: it was cut short")
        handle.seek(offset)
        index_bytes = handle.read(length)
        if zlib.crc32(index_bytes) != crc:
            raise RecordingDamagedError("the index is damaged")
        try:
            index = json.loads(index_bytes)
            segments = tuple(Segment(*[int(value) for value in row]) for row in index.pop("segments"))
            duration_ms = int(index.pop("duration_ms"))
        except (ValueError, TypeError, KeyError) as error:
            raise RecordingDamagedError("the index is damaged") from error
        for segment in segments:
            if segment.offset + segment.length > offset:
                raise RecordingDamagedError("a segment lies outside the file")
            handle.seek(segment.offset - _SEGMENT_HEADER.size)
            header = _SEGMENT_HEADER.unpack(handle.read(_SEGMENT_HEADER.size))
            if header != (SEGMENT_MAGIC, segment.start_ms, segment.end_ms, segment.width, segment.height,
                          segment.length, segment.crc):
                raise RecordingDamagedError("a segment does not match the index")
            if check_payloads and zlib.crc32(handle.read(segment.length)) != segment.crc:
                raise RecordingDamagedError("a segment is damaged")
    return RecordingIndex(meta=meta, duration_ms=duration_ms, segments=segments, extra=index)


def segment_payload(path: Path, segment: Segment) -> bytes:
    """A segment's stored bytes (one gzip member), checked against its CRC."""
    with path.open("rb") as handle:
        handle.seek(segment.offset)
        payload = handle.read(segment.length)
    if len(payload) != segment.length or zlib.crc32(payload) != segment.crc:
        raise RecordingDamagedError("a segment is damaged")
    return payload


def segment_records(payload: bytes) -> list[tuple[int, bytes]]:
    """A segment's records (time in ms, server message), inflated."""
    data = zlib.decompress(payload, 31)
    records: list[tuple[int, bytes]] = []
    offset = 0
    while offset + RECORD_HEADER.size <= len(data):
        at_ms, length = RECORD_HEADER.unpack_from(data, offset)
        offset += RECORD_HEADER.size
        records.append((at_ms, data[offset:offset + length]))
        offset += length
    return records


# --- The connection ----------------------------------------------------------------------


@dataclass(frozen=True)
class RecorderLimits:
    """How a recording is taken and how far it may grow."""

    keyframe_s: float = 5.0
    frames_per_s: float = 15.0
    max_bytes: int = 64 * 1024 * 1024
    max_s: float = 30 * 60.0
    timeout_s: float = 10.0


STOP_SIZE, STOP_LENGTH = "size", "length"


class Recorder:
    """Records a machine's display into a `RecordingWriter`, one connection at a
    time (a reset gives the visit a new machine: `run` is called again with its
    socket, and the recording goes on at a new keyframe). Sound, when asked for,
    goes to `on_sound` as PCM with its time."""

    def __init__(self, writer: RecordingWriter, limits: RecorderLimits, *,
                 sound: tuple[int, int] | None = None,
                 on_sound: Callable[[float, bytes], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.writer = writer
        self.limits = limits
        self.sound = sound
        self.on_sound = on_sound
        self._clock = clock
        self.started = clock()
        # Why the recording stopped by itself (its size or length), once it has.
        self.stopped: str | None = None

    def begin(self) -> None:
        """The recording's time starts now."""
        self.started = self._clock()

    def elapsed_ms(self) -> int:
        return int((self._clock() - self.started) * 1000)

    async def run(self, vnc_path: Path) -> None:
        """Record from this machine's display until its socket ends or a limit is reached."""
        try:
            async with asyncio.timeout(self.limits.timeout_s):
                reader, writer = await asyncio.open_unix_connection(str(vnc_path), limit=1 << 20)
        except (OSError, TimeoutError) as error:
            raise RecordingError(f"the VNC socket cannot be reached: {error}") from error
        try:
            try:
                async with asyncio.timeout(self.limits.timeout_s):
                    size = await rfb_greet(reader, writer, RecordingError)
            except (asyncio.IncompleteReadError, TimeoutError) as error:
                raise RecordingError(f"the VNC server did not greet: {error!r}") from error
            await self._record(reader, writer, size, vnc_path)
        except (OSError, asyncio.IncompleteReadError):
            return  # the machine went (a reset, the visit's end)
        finally:
            writer.close()

    async def _record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      size: tuple[int, int], vnc_path: Path) -> None:
        encodings = [ENCODING_RAW, ENCODING_DESKTOP_SIZE]
        if self.sound is not None:
            encodings.append(ENCODING_QEMU_AUDIO)
        setup = (struct.pack(">B3x", _SET_PIXEL_FORMAT) + PIXEL_FORMAT
                 + struct.pack(">BxH", _SET_ENCODINGS, len(encodings))
                 + b"".join(struct.pack(">i", encoding) for encoding in encodings))
        if self.sound is not None:
            channels, rate = self.sound
            setup += struct.pack(">BBHBBI", _QEMU, 1, 2, 3, channels, rate) + struct.pack(">BBH", _QEMU, 1, 0)
        width, height = size
        writer.write(setup + _request(False, width, height))
        await _refresh_soon(vnc_path)
        keyframe_due = True
        next_keyframe = self._clock() + self.limits.keyframe_s
        frame_s = 1.0 / max(0.5, self.limits.frames_per_s)
        # When to ask for the next picture (None: one has been asked for). Pictures
        # come at the recording's own rate, however fast the screen changes; sound
        # and other messages are read meanwhile.
        ask_at: float | None = None
        while True:
            if ask_at is not None:
                try:
                    async with asyncio.timeout(max(0.0, ask_at - self._clock())):
                        head = await reader.readexactly(1)
                except TimeoutError:
                    now = self._clock()
                    if now >= next_keyframe:
                        keyframe_due = True
                        next_keyframe = now + self.limits.keyframe_s
                    self.writer.mark(self.elapsed_ms())
                    writer.write(_request(not keyframe_due, width, height))
                    if keyframe_due:
                        await _refresh_soon(vnc_path)
                    ask_at = None
                    continue
            else:
                head = await reader.readexactly(1)
            message_type = head[0]
            if message_type == _QEMU:
                await self._sound(reader)
                continue
            if message_type != _UPDATE:
                await _skip_other(reader, message_type)
                continue
            received = self._clock()
            message, new_size, area = await _update_read(reader, (width, height))
            at_ms = self.elapsed_ms()
            if keyframe_due and area >= width * height and new_size == (width, height):
                self.writer.segment_start(at_ms=at_ms, width=width, height=height)
                keyframe_due = False
            if self.writer.in_segment and len(message) > 4:
                self.writer.record(at_ms, message)
            if new_size != (width, height):
                # A new video mode: the next picture is a full one, a new segment there.
                width, height = new_size
                keyframe_due = True
            if self._over_limits():
                return
            ask_at = received + frame_s

    async def _sound(self, reader: asyncio.StreamReader) -> None:
        kind, operation = struct.unpack(">BH", await reader.readexactly(3))
        if kind != 1:
            raise RecordingError(f"unknown QEMU server message {kind}")
        if operation != 2:
            return  # begin, end
        length = int.from_bytes(await reader.readexactly(4), "big")
        if length > AUDIO_MESSAGE_MAX_BYTES:
            raise RecordingError(f"an audio message of {length} bytes")
        pcm = await reader.readexactly(length)
        if self.on_sound is not None:
            self.on_sound(self._clock() - self.started, pcm)

    def _over_limits(self) -> bool:
        if self.writer.bytes_written >= self.limits.max_bytes:
            self.stopped = STOP_SIZE
        elif self._clock() - self.started >= self.limits.max_s:
            self.stopped = STOP_LENGTH
        return self.stopped is not None


async def _refresh_soon(vnc_path: Path) -> None:
    """Have QEMU send the full picture asked for now, not at its next display refresh,
    whose interval grows to 3 s on a still screen: a new connection to its VNC server
    sets it back to its shortest (as `sessions.machines.machine.vnc_refresh_soon` does)."""
    with contextlib.suppress(OSError):
        _reader, writer = await asyncio.open_unix_connection(str(vnc_path))
        writer.close()


def _request(incremental: bool, width: int, height: int) -> bytes:
    return struct.pack(">BBHHHH", _UPDATE_REQUEST, 1 if incremental else 0, 0, 0, width, height)


async def _update_read(reader: asyncio.StreamReader, size: tuple[int, int]
                       ) -> tuple[bytes, tuple[int, int], int]:
    """A whole FramebufferUpdate (its type byte already read): the message, the
    display's size after it, and the area its pictures cover."""
    head = await reader.readexactly(3)
    count = int.from_bytes(head[1:3], "big")
    parts = [bytes([_UPDATE]), head]
    area = 0
    for _ in range(count):
        rectangle = await reader.readexactly(12)
        _x, _y, width, height, encoding = struct.unpack(">HHHHi", rectangle)
        parts.append(rectangle)
        if encoding == ENCODING_RAW:
            if width > DISPLAY_MAX or height > DISPLAY_MAX:
                raise RecordingError(f"a rectangle of {width}x{height}")
            parts.append(await reader.readexactly(width * height * BYTES_PER_PIXEL))
            area += width * height
        elif encoding == ENCODING_DESKTOP_SIZE:
            if not (0 < width <= DISPLAY_MAX and 0 < height <= DISPLAY_MAX):
                raise RecordingError(f"a display of {width}x{height}")
            size = (width, height)
        elif encoding != ENCODING_QEMU_AUDIO:
            raise RecordingError(f"the VNC server sent encoding {encoding}, which was not asked for")
    return b"".join(parts), size, area


async def _skip_other(reader: asyncio.StreamReader, message_type: int) -> None:
    if message_type == _BELL:
        return
    if message_type == _CUT_TEXT:
        head = await reader.readexactly(7)
        await reader.readexactly(abs(int.from_bytes(head[3:7], "big", signed=True)))
        return
    if message_type == _COLOUR_MAP:
        head = await reader.readexactly(5)
        await reader.readexactly(6 * int.from_bytes(head[3:5], "big"))
        return
    raise RecordingError(f"unknown VNC server message {message_type}")
