"""A machine's sound, as QEMU's own VNC server hands it to a client that asks.

Owns: the portal's own RFB connection to a machine's VNC socket that asks for
sound and no pictures (RFB 3.8, shared; the QEMU audio pseudo-encoding -259 and
QEMU's audio client messages: set the format, enable), reading QEMU's audio
server messages from it (begin, data, end), the format the portal asks for, and
telling sound from silence so that a silent machine costs a browser nothing.

Must not: import Django, know about visitors, or hold more than one read of
the machine's output: what waits for a browser, and what happens to a browser
that does not read, is the caller's choice.

QEMU mixes what the PC speaker and the cards play and sends it to each VNC
client that enabled audio, as it plays, in the format the client asked for:
about every 10 ms (QEMU's audio timer) while a sound device is active, nothing
while none is. An AdLib card stays active from the guest's first write to it
on, playing zeros when no note sounds; `SilenceGate` drops those.

Why QEMU's VNC audio: it is QEMU's own mechanism, on the socket the portal
already has, with no file in the run directory (QEMU's uid cannot write there,
and its seccomp sandbox forbids spawning) and no service on the host.
Considered instead: `-audiodev wav` into a FIFO (QEMU writes on its own clock,
so a reader that lags loses sound or stalls QEMU's audio timer), QEMU's D-Bus
audio (a bus per machine or per host), and a PulseAudio or PipeWire server (a
service on every node, and their protocols in the portal).
"""
from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from sessions.display.greeting import rfb_greet

# RFB (RFC 6143) and QEMU's extension, as QEMU 7.2's ui/vnc.c speaks them.
ENCODING_QEMU_AUDIO = -259
# Pseudo-encodings QEMU may acknowledge with an empty rectangle.
_PSEUDO_ENCODINGS = {ENCODING_QEMU_AUDIO}
_CLIENT_SET_ENCODINGS = 2
_QEMU_MESSAGE = 255
_QEMU_AUDIO = 1
_AUDIO_ENABLE, _AUDIO_SET_FORMAT = 0, 2
_AUDIO_END, _AUDIO_BEGIN, _AUDIO_DATA = 0, 1, 2
_FORMAT_S16 = 3
# QEMU sends about 10 ms a message; anything near this is not a machine's sound.
AUDIO_MESSAGE_MAX_BYTES = 1024 * 1024
READ_BYTES = 64 * 1024

# What the portal asks QEMU for. 44.1 kHz is the rate the AdLib and the Sound
# Blaster's mixer run at (the PC speaker at 32 kHz), so nothing is thrown away
# that a card made; one channel unless a card can play two (the Sound Blaster 16).
AUDIO_RATE_HZ = 44100
# Peaks at or below this (of 32767) count as silence: -72 dBFS, inaudible.
SILENCE_PEAK = 8
# Silence after sound is still sent for this long, so that rests inside music
# keep their length; after it, nothing is sent until there is sound again.
SILENCE_HOLD_S = 0.25
# While only silence arrives (an AdLib plays zeros from the guest's first write
# on), the socket is read this often rather than at each of QEMU's 10 ms
# messages: a tenth of the wake-ups (the portal's cost of such a listener goes
# from 1.6 % of a core to 0.4 %), for sound at most this much later when it
# comes after such a silence. A machine whose devices are all quiet sends
# nothing, and is read at once when one plays.
SILENCE_READ_INTERVAL_S = 0.1
# While sound plays, the socket is read this often: QEMU's 10 ms messages go to
# the browser a few at a time (fewer messages, less of the portal's CPU), which
# the page's jitter buffer (60 ms) absorbs. The first sound after silence goes at once.
SOUND_READ_INTERVAL_S = 0.02


class AudioError(Exception):
    """The machine's VNC server could not be reached or spoke something unexpected."""


@dataclass(frozen=True)
class AudioFormat:
    """PCM as the sound socket sends it: signed 16-bit little-endian samples, interleaved."""

    rate: int
    channels: int
    sample: str = "s16le"

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.rate * self.frame_bytes

    def message(self) -> dict[str, object]:
        """The socket's first message (docs/api.md)."""
        return {"type": "format", "rate": self.rate, "channels": self.channels,
                "sample": self.sample}


def audio_format_for(sound: tuple[str, ...]) -> AudioFormat:
    """The format a machine with this sound hardware is heard in."""
    return AudioFormat(rate=AUDIO_RATE_HZ, channels=2 if "sb16" in sound else 1)


# --- QEMU's side of the stream -------------------------------------------------

BEGIN, END = "begin", "end"


class ServerStream:
    """Frames what a VNC server sends after ServerInit, for a client that asked for
    audio only: it yields BEGIN, END and PCM bytes, and raises AudioError on
    anything such a client cannot get (a picture, a message it does not know)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[str | bytes]:
        self._buffer += data
        events: list[str | bytes] = []
        while (size := self._message_size()) is not None and len(self._buffer) >= size:
            message = bytes(self._buffer[:size])
            del self._buffer[:size]
            if message[0] == _QEMU_MESSAGE:
                operation = int.from_bytes(message[2:4], "big")
                if operation == _AUDIO_DATA:
                    events.append(message[8:])
                else:
                    events.append(BEGIN if operation == _AUDIO_BEGIN else END)
        return events

    def _message_size(self) -> int | None:
        """Bytes in the message at the buffer's head; None while more are needed."""
        buffer = self._buffer
        if not buffer:
            return None
        sizer = _SERVER_MESSAGE_SIZES.get(buffer[0])
        if sizer is None:
            raise AudioError(f"unknown VNC server message {buffer[0]}")
        return sizer(buffer)


def _update_size(buffer: bytearray) -> int | None:
    """FramebufferUpdate: only the acknowledgement of -259 is expected, no pixels."""
    if len(buffer) < 4:
        return None
    count = int.from_bytes(buffer[2:4], "big")
    if len(buffer) < 4 + 12 * count:
        return None
    for number in range(count):
        (encoding,) = struct.unpack_from(">i", buffer, 4 + 12 * number + 8)
        if encoding not in _PSEUDO_ENCODINGS:
            raise AudioError(f"the VNC server sent a picture (encoding {encoding}) "
                             "to a client that asked for none")
    return 4 + 12 * count


def _colour_map_size(buffer: bytearray) -> int | None:
    """SetColourMapEntries."""
    return 6 + 6 * int.from_bytes(buffer[4:6], "big") if len(buffer) >= 6 else None


def _cut_text_size(buffer: bytearray) -> int | None:
    """ServerCutText (a negative length: the extended clipboard)."""
    return 8 + abs(int.from_bytes(buffer[4:8], "big", signed=True)) if len(buffer) >= 8 else None


def _qemu_message_size(buffer: bytearray) -> int | None:
    """QEMU's own server messages: of them, only audio."""
    if len(buffer) < 4:
        return None
    if buffer[1] != _QEMU_AUDIO:
        raise AudioError(f"unknown QEMU server message {buffer[1]}")
    operation = int.from_bytes(buffer[2:4], "big")
    if operation in {_AUDIO_BEGIN, _AUDIO_END}:
        return 4
    if operation != _AUDIO_DATA:
        raise AudioError(f"unknown QEMU audio message {operation}")
    if len(buffer) < 8:
        return None
    length = int.from_bytes(buffer[4:8], "big")
    if length > AUDIO_MESSAGE_MAX_BYTES:
        raise AudioError(f"an audio message of {length} bytes")
    return 8 + length


# The size of each server message an audio client may receive, by its type.
_SERVER_MESSAGE_SIZES: dict[int, Callable[[bytearray], int | None]] = {
    0: _update_size, 1: _colour_map_size, 2: lambda buffer: 1, 3: _cut_text_size,
    _QEMU_MESSAGE: _qemu_message_size,
}


# --- Sound and silence -----------------------------------------------------------


class SilenceGate:
    """Passes sound, and silence only for `hold_s` after sound; drops the rest.

    Works on whole frames: a part frame at the end of a chunk waits for the next.
    """

    def __init__(self, audio_format: AudioFormat, *, hold_s: float = SILENCE_HOLD_S,
                 peak: int = SILENCE_PEAK) -> None:
        self.format = audio_format
        self.peak = peak
        self._hold_bytes = int(hold_s * audio_format.rate) * audio_format.frame_bytes
        # How much more silence may pass before the gate closes (0: closed).
        self._hold_left = 0
        self._partial = b""
        self.passed_bytes = 0
        self.dropped_bytes = 0

    def silent(self, pcm: bytes) -> bool:
        if not pcm.strip(b"\0"):
            return True
        samples = memoryview(pcm).cast("h")
        return max(samples) <= self.peak and min(samples) >= -self.peak

    def admit(self, data: bytes) -> bytes:
        """What of data goes to the browser (b"" for nothing)."""
        if self._partial:
            data = self._partial + data
        whole = len(data) - len(data) % self.format.frame_bytes
        pcm, self._partial = data[:whole], data[whole:]
        if not pcm:
            return b""
        if not self.silent(pcm):
            self._hold_left = self._hold_bytes
        elif self._hold_left > 0:
            self._hold_left = max(0, self._hold_left - len(pcm))
        else:
            self.dropped_bytes += len(pcm)
            return b""
        self.passed_bytes += len(pcm)
        return pcm


# --- The connection ------------------------------------------------------------------


class AudioConnection:
    """An RFB connection to one machine's VNC socket that gets its sound."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 audio_format: AudioFormat) -> None:
        self.reader, self.writer, self.format = reader, writer, audio_format
        self.stream = ServerStream()
        # Whether a sound device plays now (QEMU's begin and end).
        self.playing = False
        # Why the socket ended, when it did not end cleanly (a QEMU killed by a reset).
        self.error: OSError | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The PCM of each read, as it arrives (several of QEMU's messages that
        arrived together are one chunk); ends when the machine's socket does."""
        while True:
            try:
                data = await self.reader.read(READ_BYTES)
            except OSError as error:
                self.error = error
                return
            if not data:
                return
            pcm = []
            for event in self.stream.feed(data):
                if event == BEGIN:
                    self.playing = True
                elif event == END:
                    self.playing = False
                else:
                    assert isinstance(event, bytes)
                    pcm.append(event)
            if pcm:
                yield b"".join(pcm)

    async def rest(self, seconds: float) -> None:
        """Read nothing for a while (what arrives meanwhile waits in the socket)."""
        transport = self.writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        transport.pause_reading()
        try:
            await asyncio.sleep(seconds)
        finally:
            if not transport.is_closing():
                transport.resume_reading()

    def close(self) -> None:
        self.writer.close()


async def audio_open(vnc_path: Path, audio_format: AudioFormat, *, timeout_s: float) -> AudioConnection:
    """Connect to a machine's VNC socket as a shared client asking for sound only."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(vnc_path), limit=2 * READ_BYTES)
    except (OSError, TimeoutError) as error:
        raise AudioError(f"the VNC socket cannot be reached: {error}") from error
    try:
        async with asyncio.timeout(timeout_s):
            await _handshake(reader, writer, audio_format)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        writer.close()
        raise AudioError(f"the VNC server did not complete the handshake: {error!r}") from error
    except BaseException:
        writer.close()
        raise
    return AudioConnection(reader, writer, audio_format)


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     audio_format: AudioFormat) -> None:
    await rfb_greet(reader, writer, AudioError)
    writer.write(
        struct.pack(">BxHi", _CLIENT_SET_ENCODINGS, 1, ENCODING_QEMU_AUDIO)
        + struct.pack(">BBHBBI", _QEMU_MESSAGE, _QEMU_AUDIO, _AUDIO_SET_FORMAT, _FORMAT_S16,
                      audio_format.channels, audio_format.rate)
        + struct.pack(">BBH", _QEMU_MESSAGE, _QEMU_AUDIO, _AUDIO_ENABLE)
    )
    await writer.drain()
