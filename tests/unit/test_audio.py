from __future__ import annotations

import struct

import pytest

from sessions.display.audio import (
    BEGIN,
    END,
    AudioError,
    AudioFormat,
    ServerStream,
    SilenceGate,
    audio_format_for,
)

MONO = AudioFormat(rate=44100, channels=1)


def audio_data(pcm: bytes) -> bytes:
    return struct.pack(">BBHI", 255, 1, 2, len(pcm)) + pcm


# What QEMU sends a client that asked for -259 and enabled audio: the encoding's
# acknowledgement (an empty 640x480 rectangle), then a sound from begin to end.
STREAM = (
    struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 640, 480, -259)
    + struct.pack(">BBH", 255, 1, 1)
    + audio_data(b"\x01\x02" * 5)
    + struct.pack(">B", 2)  # a bell, which a client may get at any time
    + struct.pack(">BxxxI", 3, 4) + b"clip"
    + audio_data(b"\x03\x04" * 7)
    + struct.pack(">BBH", 255, 1, 0)
)
EVENTS: list[str | bytes] = [BEGIN, b"\x01\x02" * 5, b"\x03\x04" * 7, END]


def test_it_frames_the_server_stream_split_at_every_byte() -> None:
    for cut in range(len(STREAM) + 1):
        stream = ServerStream()
        events = stream.feed(STREAM[:cut]) + stream.feed(STREAM[cut:])
        assert events == EVENTS, cut
    stream = ServerStream()
    assert [event for byte in STREAM for event in stream.feed(bytes([byte]))] == EVENTS


@pytest.mark.parametrize("data", [
    struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", 0, 0, 16, 16, 0),  # a Raw picture
    struct.pack(">BBH", 255, 0, 0),  # a QEMU message other than audio
    struct.pack(">BBH", 255, 1, 9),  # an audio message QEMU does not send
    struct.pack(">BBHI", 255, 1, 2, 64 * 1024 * 1024),  # an absurd length
    b"\x07",  # no such server message
])
def test_it_refuses_what_an_audio_client_cannot_get(data: bytes) -> None:
    with pytest.raises(AudioError):
        ServerStream().feed(data)


def test_it_asks_for_two_channels_only_where_a_card_plays_two() -> None:
    assert audio_format_for(("pcspk",)) == AudioFormat(rate=44100, channels=1)
    assert audio_format_for(("pcspk", "adlib")).channels == 1
    assert audio_format_for(("pcspk", "adlib", "sb16")).channels == 2
    assert audio_format_for(("pcspk",)).message() == {
        "type": "format", "rate": 44100, "channels": 1, "sample": "s16le"}
    assert AudioFormat(rate=44100, channels=2).bytes_per_second == 176400


def samples(*values: int) -> bytes:
    return struct.pack(f"<{len(values)}h", *values)


def test_it_passes_sound_and_drops_silence_after_a_short_hold() -> None:
    gate = SilenceGate(MONO, hold_s=0.01)  # 441 frames of silence after sound
    silence = samples(*[0] * 200)
    assert gate.admit(silence) == b""  # silence before any sound costs nothing
    tone = samples(*[3000, -3000] * 100)
    assert gate.admit(tone) == tone
    # The rests inside music keep their length...
    assert gate.admit(silence) == silence
    assert gate.admit(silence) == silence
    assert gate.admit(silence) == silence
    # ...and then silence is dropped until there is sound again.
    assert gate.admit(silence) == b""
    assert gate.admit(silence) == b""
    assert gate.admit(tone) == tone
    assert gate.dropped_bytes == 3 * len(silence)


def test_it_counts_a_whisper_below_the_threshold_as_silence() -> None:
    gate = SilenceGate(MONO, hold_s=0)
    assert gate.silent(samples(0, 1, -2, 8, -8))
    assert not gate.silent(samples(0, 9))
    assert not gate.silent(samples(0, -9))
    assert gate.admit(samples(1, -1, 2)) == b""


def test_it_hands_on_whole_frames_only() -> None:
    gate = SilenceGate(AudioFormat(rate=44100, channels=2))
    tone = samples(1000, -1000, 2000, -2000)
    assert gate.admit(tone[:5]) == tone[:4]
    assert gate.admit(tone[5:]) == tone[4:]
