"""Reading the browser's side of an RFB stream: the owner's input told apart, and
a watcher's stream let through only as far as a viewer needs.

Owns: framing the client-to-server RFB messages (RFC 6143 and the QEMU and
common extensions noVNC uses) so that key and pointer events can be told from
housekeeping such as update requests, which a viewer sends even when nobody
is at the keyboard (`ClientStream`); and the gate on a watch link's stream
(`ViewerGate`), which passes on the handshake and the messages that only ask
for pictures, and refuses everything else.

Must not: change, hold back or reorder a byte of the owner's stream. It goes to
QEMU as it came; `ClientStream` only watches it. A message it cannot frame ends
the watching (the visit then counts as idle unless input arrives by another
way), never the stream.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Fixed sizes of client messages, by type, including the type byte.
_FIXED = {
    0: 20,   # SetPixelFormat
    3: 10,   # FramebufferUpdateRequest
    4: 8,    # KeyEvent
    5: 6,    # PointerEvent
    150: 10,  # EnableContinuousUpdates
    250: 4,   # xvp
}
_INPUT_TYPES = {4, 5}
_QEMU = 255
_QEMU_EXTENDED_KEY_EVENT = 0
_QEMU_AUDIO = 1


@dataclass
class ClientStream:
    """Feed it the browser's bytes in order; it says whether they held input."""

    _buffer: bytearray = field(default_factory=bytearray)
    _handshake_left: int | None = None
    _skip: int = 0
    lost: bool = False
    # Whether the viewer has asked for a screen update yet: what QEMU sends next is one.
    update_requested: bool = False

    def feed(self, data: bytes) -> bool:
        if self.lost:
            return False
        self._buffer += data
        saw_input = False
        while True:
            if self._skip:
                taken = min(self._skip, len(self._buffer))
                del self._buffer[:taken]
                self._skip -= taken
                if self._skip:
                    return saw_input
            if self._handshake_left is None:
                if len(self._buffer) < 12:
                    return saw_input
                version = bytes(self._buffer[:12])
                # 3.3: the server picks the security type, the client only sends
                # ClientInit; 3.7 and 3.8: the client picks (1 byte) first.
                self._handshake_left = 1 if version == b"RFB 003.003\n" else 2
                self._skip = 12
                continue
            if self._handshake_left:
                if not self._buffer:
                    return saw_input
                if self._handshake_left == 2 and self._buffer[0] == 2:
                    # VNC authentication: a 16-byte response before ClientInit.
                    self._skip = 1 + 16
                else:
                    self._skip = 1
                self._handshake_left -= 1
                continue
            size = self._message_size()
            if size is None:
                return saw_input
            if size < 0:
                self.lost = True
                self._buffer.clear()
                return saw_input
            message_type = self._buffer[0]
            if message_type == 3:
                self.update_requested = True
            if message_type in _INPUT_TYPES or (
                message_type == _QEMU and self._buffer[1] == _QEMU_EXTENDED_KEY_EVENT
            ):
                saw_input = True
            self._skip = size

    def _message_size(self) -> int | None:
        """Bytes in the message at the buffer's head; None if more are needed
        to tell, -1 if it is not a message this knows."""
        buffer = self._buffer
        if not buffer:
            return None
        message_type = buffer[0]
        if message_type in _FIXED:
            return _FIXED[message_type]
        if message_type == 2:  # SetEncodings: u16 count of s32
            return None if len(buffer) < 4 else 4 + 4 * int.from_bytes(buffer[2:4], "big")
        if message_type == 6:  # ClientCutText: s32 length (negative: extended clipboard)
            if len(buffer) < 8:
                return None
            return 8 + abs(int.from_bytes(buffer[4:8], "big", signed=True))
        if message_type == 248:  # ClientFence: u8 payload length at offset 8
            return None if len(buffer) < 9 else 9 + buffer[8]
        if message_type == 251:  # SetDesktopSize: u8 screen count at offset 6
            return None if len(buffer) < 8 else 8 + 16 * buffer[6]
        if message_type == _QEMU:
            if len(buffer) < 2:
                return None
            if buffer[1] == _QEMU_EXTENDED_KEY_EVENT:
                return 12
            if buffer[1] == _QEMU_AUDIO:
                if len(buffer) < 4:
                    return None
                operation = int.from_bytes(buffer[2:4], "big")
                return 10 if operation == 2 else 4
        return -1


# What a watcher's viewer may send after the handshake, by type: SetPixelFormat,
# SetEncodings, FramebufferUpdateRequest, EnableContinuousUpdates, ClientFence.
_VIEWER_TYPES = {0, 2, 3, 150, 248}
_REFUSED_WORDS = {
    4: "a key", 5: "a mouse event", 250: "a power command",
    251: "a screen size change", _QEMU: "a key or a sound request",
}
# SetEncodings longer than this is no viewer's (noVNC sends about 20).
_VIEWER_ENCODINGS_MAX = 256


class ViewerRefusedError(ValueError):
    """A watcher sent what a read-only viewer may not; the message is a sentence."""


@dataclass
class ViewerGate:
    """A watch link's RFB stream, fed in order: returns the bytes that may go on to
    QEMU (whole messages only), or raises ViewerRefusedError for the first message a
    read-only viewer may not send (keys, the mouse, power, resizing, QEMU's
    extended keys and sound, anything unknown). Clipboard text is dropped instead
    (a viewer announces its clipboard unasked). The ClientInit is always
    "shared", so a watcher can never ask for the machine to itself."""

    _buffer: bytearray = field(default_factory=bytearray)
    # 0: ProtocolVersion; 1: security type (3.7, 3.8); 2: ClientInit; 3: messages.
    _stage: int = 0
    # Bytes of a dropped message still to come (clipboard text), thrown away as they arrive.
    _drop: int = 0
    # Whether this watcher has the keyboard and mouse (the owner handed them over):
    # then keys and pointer events go on too, and the last feed says it held some.
    control: bool = False
    saw_input: bool = False

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        self.saw_input = False
        passed = bytearray()
        while True:
            if self._drop:
                dropped = min(self._drop, len(self._buffer))
                del self._buffer[:dropped]
                self._drop -= dropped
                if self._drop:
                    return bytes(passed)
            taken = self._next()
            if taken is None:
                return bytes(passed)
            passed += taken

    def _next(self) -> bytes | None:
        """What of the buffer's head may pass now (b"" for a message dropped); None
        while more bytes are needed."""
        if self._stage < 3:
            return self._handshake_next()
        if not self._buffer:
            return None
        return self._message_next()

    def _handshake_next(self) -> bytes | None:
        buffer = self._buffer
        if self._stage == 0:
            if len(buffer) < 12:
                return None
            version = bytes(buffer[:12])
            if version not in {b"RFB 003.003\n", b"RFB 003.007\n", b"RFB 003.008\n"}:
                raise ViewerRefusedError("The viewer does not speak RFB 3.3, 3.7 or 3.8.")
            self._stage = 2 if version == b"RFB 003.003\n" else 1
            return self._take(12)
        if not buffer:
            return None
        if self._stage == 1:
            if buffer[0] != 1:  # None: the machine's display asks for no password
                raise ViewerRefusedError("A watch link's viewer may only choose no security.")
            self._stage = 2
            return self._take(1)
        self._stage = 3
        self._take(1)
        return b"\x01"  # shared

    def _message_next(self) -> bytes | None:
        buffer = self._buffer
        message_type = buffer[0]
        if message_type == 6:
            # ClientCutText: noVNC announces its clipboard (the extended clipboard's
            # capabilities) on connecting, view-only or not. A watcher's clipboard
            # never reaches the machine: the message is dropped, the watcher stays.
            if len(buffer) < 8:
                return None
            self._drop = 8 + abs(int.from_bytes(buffer[4:8], "big", signed=True))
            return b""
        if self.control and message_type in _INPUT_TYPES | {_QEMU}:
            if message_type == _QEMU and len(buffer) < 2:
                return None
            if message_type in _INPUT_TYPES or buffer[1] == _QEMU_EXTENDED_KEY_EVENT:
                return self._input_next(message_type)
        if message_type not in _VIEWER_TYPES:
            what = _REFUSED_WORDS.get(message_type, f"an RFB message of type {message_type}")
            raise ViewerRefusedError(f"This is a watch link: it shows the machine and takes no input, "
                                     f"but the viewer sent {what}.")
        if message_type == 2 and len(buffer) >= 4 \
                and int.from_bytes(buffer[2:4], "big") > _VIEWER_ENCODINGS_MAX:
            raise ViewerRefusedError("The viewer asked for more encodings than any viewer needs.")
        size = self._message_size()
        if size is None or len(buffer) < size:
            return None
        return self._take(size)

    def _input_next(self, message_type: int) -> bytes | None:
        """A key or pointer event of a watcher who has been given control."""
        input_size = 12 if message_type == _QEMU else _FIXED[message_type]
        if len(self._buffer) < input_size:
            return None
        self.saw_input = True
        return self._take(input_size)

    def _message_size(self) -> int | None:
        buffer = self._buffer
        message_type = buffer[0]
        if message_type in _FIXED:
            return _FIXED[message_type]
        if message_type == 2:
            return None if len(buffer) < 4 else 4 + 4 * int.from_bytes(buffer[2:4], "big")
        if message_type == 248:
            return None if len(buffer) < 9 else 9 + buffer[8]
        return None

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken
