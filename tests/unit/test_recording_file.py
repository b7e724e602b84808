"""The recording file: written a segment at a time, read back only when whole, and
drawn into frames as the WebM export draws them."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sessions.display.recording import (
    ENCODING_DESKTOP_SIZE,
    ENCODING_RAW,
    RecordingDamagedError,
    RecordingWriter,
    recording_read,
    segment_payload,
    segment_records,
)
from sessions.machines.video import frames, video_size


def _update(*rectangles: tuple[int, int, int, int, int, bytes]) -> bytes:
    message = struct.pack(">BxH", 0, len(rectangles))
    for x, y, width, height, encoding, pixels in rectangles:
        message += struct.pack(">HHHHi", x, y, width, height, encoding) + pixels
    return message


def _full(width: int, height: int, colour: bytes) -> bytes:
    return _update((0, 0, width, height, ENCODING_RAW, colour * width * height))


def _recording(path: Path) -> None:
    writer = RecordingWriter(path=path, meta={"exhibit": "dos"})
    writer.open()
    writer.segment_start(at_ms=0, width=4, height=2)
    writer.record(0, _full(4, 2, b"\x10\x20\x30\x00"))
    writer.record(400, _update((1, 1, 1, 1, ENCODING_RAW, b"\xff\x00\x00\x00")))
    writer.segment_start(at_ms=1000, width=4, height=2)
    writer.record(1000, _full(4, 2, b"\x00\x00\xff\x00"))
    # A new video mode inside the segment: the next picture is at the new size.
    writer.record(1500, _update((0, 0, 6, 2, ENCODING_DESKTOP_SIZE, b"")))
    writer.record(1500, _full(6, 2, b"\x00\xff\x00\x00"))
    writer.close(duration_ms=2000)


def test_it_reads_back_a_whole_recording_segment_by_segment(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    _recording(path)
    index = recording_read(path)
    assert index.meta == {"exhibit": "dos"}
    assert index.duration_ms == 2000
    assert [(s.start_ms, s.end_ms, s.width, s.height) for s in index.segments] == \
        [(0, 400, 4, 2), (1000, 1500, 4, 2)]
    records = segment_records(segment_payload(path, index.segments[1]))
    assert [at for at, _message in records] == [1000, 1500, 1500]
    assert records[0][1] == _full(4, 2, b"\x00\x00\xff\x00")


def test_it_refuses_a_file_cut_short_or_changed(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    _recording(path)
    whole = path.read_bytes()
    index = recording_read(path)
    path.write_bytes(whole[:-1])
    with pytest.raises(RecordingDamagedError, match="cut short"):
        recording_read(path)
    # A byte changed inside a segment's pictures.
    changed = bytearray(whole)
    changed[index.segments[0].offset + 5] ^= 0xFF
    path.write_bytes(bytes(changed))
    with pytest.raises(RecordingDamagedError, match="damaged"):
        recording_read(path)
    with pytest.raises(RecordingDamagedError):
        segment_payload(path, index.segments[0])
    # Being written (no index yet): not a recording.
    writer = RecordingWriter(path=tmp_path / "w.rec", meta={})
    writer.open()
    writer.segment_start(at_ms=0, width=4, height=2)
    writer.record(0, _full(4, 2, b"\x01\x02\x03\x00"))
    writer.segment_end()
    writer.abandon()
    with pytest.raises(RecordingDamagedError):
        recording_read(tmp_path / "w.rec")


def test_it_draws_frames_at_the_video_size_with_each_change_at_its_time(tmp_path: Path) -> None:
    path = tmp_path / "r.rec"
    _recording(path)
    index = recording_read(path)
    size = video_size(path, index)
    assert size == (6, 2)
    drawn = list(frames(path, index, frames_per_s=2, size=size))
    assert len(drawn) == 4  # 0, 0.5, 1.0, 1.5 s
    # At 0 s the 4x2 display, centred on black: its pixel (1, 1) not yet changed.
    first = drawn[0]
    assert first[(1 * 6 + 1) * 4:(1 * 6 + 1) * 4 + 4] == b"\x10\x20\x30\x00"
    assert first[0:4] == b"\x00\x00\x00\x00"
    # At 0.5 s the change at 400 ms is there.
    assert drawn[1][(1 * 6 + 2) * 4:(1 * 6 + 2) * 4 + 4] == b"\xff\x00\x00\x00"
    # At 1.5 s the new mode fills the frame.
    assert drawn[3] == b"\x00\xff\x00\x00" * 12
