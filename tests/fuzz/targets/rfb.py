"""Fuzz target: the browser's side of an RFB stream, as `sessions.display.rfb` reads it.

Each input is a stream and how it arrives: byte 0 says when the watcher has the
keyboard and mouse (never, always, or a pattern over the WebSocket messages),
byte 1 how the stream is cut into messages, the rest is the stream. It goes
through the watch link's gate (`ViewerGate`) and the owner's watcher
(`ClientStream`), both fed message by message as the display consumer feeds them.

Findings: an exception from either but the gate's own `ViewerRefusedError`;
a byte the gate passes on toward QEMU that the allow-list does not name (what
it passed is parsed again here, message by message, and every type and length
checked against RFC 6143 and the watcher's control at that moment); the gate
passing or refusing otherwise than an independent model of its rules
(`expected_feeds`); `ClientStream` passing or refusing something different when
the same bytes come cut differently (before a refusal, the stream fed whole may
have passed less, never something else).

Run: `.venv/bin/python -m tests.fuzz.targets.rfb [libFuzzer options] [corpus dirs]`.
"""
from __future__ import annotations

from dataclasses import dataclass

from tests.fuzz.harness import OracleError, fuzz_main

VERSIONS = {b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"}
# What a watcher may always send (RFC 6143 7.5 and the extensions noVNC uses): each
# type with its fixed length, or None where the length is in the message.
VIEWER_MESSAGES: dict[int, int | None] = {0: 20, 2: None, 3: 10, 150: 10, 248: None}
# What a watcher with the keyboard and mouse may send too: KeyEvent, PointerEvent,
# QEMU's extended KeyEvent (255, subtype 0).
INPUT_MESSAGES = {4: 8, 5: 6}
QEMU_EXTENDED_KEY_EVENT_BYTES = 12
ENCODINGS_MAX = 256
# RFC 6143 (the fence extension): a fence carries at most 64 bytes.
FENCE_PAYLOAD_MAX = 64


@dataclass(frozen=True)
class Arrival:
    """The stream cut into WebSocket messages, and the watcher's control at each."""

    chunks: list[bytes]
    controls: list[bool]

    @property
    def stream(self) -> bytes:
        return b"".join(self.chunks)


def arrival(data: bytes) -> Arrival:
    mode, cut, stream = (data[0] if data else 0), (data[1] if len(data) > 1 else 0), data[2:]
    chunks: list[bytes] = []
    if cut == 0:
        chunks = [stream] if stream else []
    else:
        span = 1 + cut % 64
        position = 0
        while position < len(stream):
            size = 1 + (cut * (len(chunks) + 1) * 7) % span
            chunks.append(stream[position:position + size])
            position += size
    pattern = mode >> 2
    controls = [mode % 4 == 1 or (mode % 4 == 2 and bool(pattern >> (index % 6) & 1))
                for index in range(len(chunks))]
    return Arrival(chunks, controls)


def _size(stream: bytes, start: int) -> int | None:
    """The length of the viewer's message at start; None until enough bytes tell it."""
    kind = stream[start]
    fixed = VIEWER_MESSAGES.get(kind) or INPUT_MESSAGES.get(kind)
    if fixed is not None:
        return fixed
    if kind == 2:
        return None if len(stream) < start + 4 else 4 + 4 * int.from_bytes(stream[start + 2:start + 4], "big")
    if kind == 248:
        return None if len(stream) < start + 9 else 9 + stream[start + 8]
    if kind == 255:
        return QEMU_EXTENDED_KEY_EVENT_BYTES
    raise AssertionError(f"no size for type {kind}")


class _Model:
    """The gate's rules as its documentation states them, walked over the whole stream."""

    def __init__(self, arrival: Arrival) -> None:
        self.arrival = arrival
        self.stream = arrival.stream
        self.ends: list[int] = []
        for chunk in arrival.chunks:
            self.ends.append((self.ends[-1] if self.ends else 0) + len(chunk))
        self.outputs = [b"" for _ in arrival.chunks]

    def feed_of(self, position: int) -> int:
        return next(index for index, end in enumerate(self.ends) if position < end)

    def handshake(self) -> tuple[int | None, int | None]:
        """(where the messages start, or None if the stream ends first; the refusing feed)."""
        stream = self.stream
        if len(stream) < 12:
            return None, None
        if stream[:12] not in VERSIONS:
            return None, self.feed_of(11)
        self.outputs[self.feed_of(11)] += stream[:12]
        position = 12
        if stream[:12] != b"RFB 003.003\n":
            if len(stream) <= position:
                return None, None
            if stream[position] != 1:
                return None, self.feed_of(position)
            self.outputs[self.feed_of(position)] += b"\x01"
            position += 1
        if len(stream) <= position:
            return None, None
        self.outputs[self.feed_of(position)] += b"\x01"  # ClientInit: always shared
        return position + 1, None

    def input_message(self, position: int) -> tuple[int | None, int | None]:
        """A key or pointer event: at every feed while it waits at the head, the gate asks
        whether the watcher has control now. (The next position; the refusing feed.)"""
        kind = self.stream[position]
        size = INPUT_MESSAGES.get(kind, QEMU_EXTENDED_KEY_EVENT_BYTES)
        for feed in range(self.feed_of(position), len(self.ends)):
            if not self.arrival.controls[feed]:
                return None, feed
            available = self.ends[feed] - position
            if kind == 255 and available >= 2 and self.stream[position + 1] != 0:
                return None, feed
            if available >= size:
                self.outputs[feed] += self.stream[position:position + size]
                return position + size, None
        return None, None

    def viewer_message(self, position: int) -> tuple[int | None, int | None]:
        stream = self.stream
        kind = stream[position]
        if kind not in VIEWER_MESSAGES:
            return None, self.feed_of(position)
        if kind == 2 and len(stream) >= position + 4 \
                and int.from_bytes(stream[position + 2:position + 4], "big") > ENCODINGS_MAX:
            return None, self.feed_of(position + 3)
        if kind == 248 and len(stream) >= position + 9 and stream[position + 8] > FENCE_PAYLOAD_MAX:
            return None, self.feed_of(position + 8)  # a fence's payload is at most 64 bytes
        size = _size(stream, position)
        if size is None or len(stream) < position + size:
            return None, None
        self.outputs[self.feed_of(position + size - 1)] += stream[position:position + size]
        return position + size, None

    def walk(self) -> tuple[list[bytes], int | None]:
        position, refused = self.handshake()
        while position is not None and position < len(self.stream):
            kind = self.stream[position]
            if kind == 6:  # ClientCutText: dropped whole
                if len(self.stream) < position + 8:
                    break
                position += 8 + abs(int.from_bytes(self.stream[position + 4:position + 8], "big",
                                                   signed=True))
            elif kind in INPUT_MESSAGES or kind == 255:
                position, refused = self.input_message(position)
            else:
                position, refused = self.viewer_message(position)
        return self.outputs, refused


def expected_feeds(arrival: Arrival) -> tuple[list[bytes], int | None]:
    """What the gate should pass at each feed, and the feed it should refuse at (or None)."""
    return _Model(arrival).walk()


def allow_list_check(outputs: list[bytes], controls: list[bool]) -> None:
    """Parse what the gate passed as QEMU will, and refuse anything the allow-list does not
    name: the handshake (a known version, security None, a shared ClientInit), then whole
    messages of the viewer's types (and input, in a feed where the watcher had control).
    Each feed's output must hold whole messages only."""
    stage = 0  # 0: version; 1: security type; 2: ClientInit; 3: messages
    for feed, (output, control) in enumerate(zip(outputs, controls, strict=True)):
        offset = 0
        while offset < len(output):
            if stage == 0:
                version = output[offset:offset + 12]
                if version not in VERSIONS:
                    raise OracleError(f"passed a byte the allow-list does not name: version {version!r}")
                stage = 2 if version == b"RFB 003.003\n" else 1
                offset += 12
                continue
            if stage in {1, 2}:
                if output[offset] != 1:
                    what = "security type" if stage == 1 else "ClientInit"
                    raise OracleError(f"passed a byte the allow-list does not name: {what} "
                                      f"{output[offset]}")
                stage += 1
                offset += 1
                continue
            kind = output[offset]
            allowed = kind in VIEWER_MESSAGES or (control and (kind in INPUT_MESSAGES or (
                kind == 255 and len(output) > offset + 1 and output[offset + 1] == 0)))
            if not allowed:
                raise OracleError(f"passed a byte the allow-list does not name: type {kind} in feed "
                                  f"{feed} (control {control})")
            if kind == 2 and len(output) >= offset + 4 \
                    and int.from_bytes(output[offset + 2:offset + 4], "big") > ENCODINGS_MAX:
                raise OracleError("passed a byte the allow-list does not name: more than "
                                  f"{ENCODINGS_MAX} encodings")
            size = _size(output, offset)
            if size is None or offset + size > len(output):
                raise OracleError(f"passed a byte the allow-list does not name: a part of a type {kind} "
                                  f"message in feed {feed}")
            offset += size


def client_stream_said(chunks: list[bytes]) -> tuple[bytes, str | None, bool]:
    """What the owner's stream passed (all of it, joined), its refusal if any, and
    whether it saw an update request."""
    from sessions.display.rfb import ClientStream, RfbRefusedError

    owner = ClientStream()
    passed = bytearray()
    refusal = None
    for chunk in chunks:
        try:
            passed += b"".join(owner.feed(chunk))
        except RfbRefusedError as error:
            refusal = type(error).__name__
            break
    return bytes(passed), refusal, owner.update_requested


class RfbTarget:
    name = "rfb"
    max_length = 4096
    timeout_s = 10
    rss_limit_mb = 1024

    def setup(self) -> None:
        return None

    def teardown(self) -> None:
        return None

    def case(self, data: bytes) -> None:
        from sessions.display.rfb import ViewerGate, ViewerRefusedError

        arriving = arrival(data)
        gate = ViewerGate()
        outputs: list[bytes] = []
        refused_at: int | None = None
        for index, (chunk, control) in enumerate(zip(arriving.chunks, arriving.controls, strict=True)):
            gate.control = control
            try:
                outputs.append(gate.feed(chunk))
            except ViewerRefusedError as refusal:
                if not str(refusal).strip():
                    raise OracleError("a refusal without a sentence") from refusal
                refused_at = index
                break
        allow_list_check(outputs, arriving.controls[:len(outputs)])
        expected, expected_refusal = expected_feeds(arriving)
        if refused_at != expected_refusal:
            raise OracleError(f"gate differs from the model: refused at feed {refused_at}, "
                              f"expected {expected_refusal}")
        if outputs != expected[:len(outputs)]:
            first = next(index for index, (got, want) in enumerate(zip(outputs, expected, strict=False))
                         if got != want)
            raise OracleError(f"gate differs from the model: feed {first} passed {outputs[first][:40]!r}, "
                              f"expected {expected[first][:40]!r}")
        whole = client_stream_said([arriving.stream] if arriving.stream else [])
        cut = client_stream_said(arriving.chunks)
        if whole[1] is not None and cut[1] == whole[1] and cut[0].startswith(whole[0]):
            # Refused at the same message: a feed that holds the refused message passes
            # none of it, so the stream fed whole passed less of what came before.
            cut = whole
        if whole != cut:
            raise OracleError(f"ClientStream depends on how the stream is cut: whole {whole}, cut {cut}")


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["sessions.display.rfb"]):
        import sessions.display.rfb  # noqa: F401
    fuzz_main(RfbTarget())


if __name__ == "__main__":
    main()
