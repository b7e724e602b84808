"""Reading the browser's side of an RFB stream: the owner's messages framed and
checked, and a watcher's stream let through only as far as a viewer needs.

Owns: framing the client-to-server RFB messages (RFC 6143 and the QEMU and
common extensions noVNC uses) against an allow-list with bounded lengths
(`message_size`, one framing for both gates); the owner's stream cut into whole
messages, each checked, so the display socket can re-send them (and translate
keys) and tell input from housekeeping such as update requests, which a viewer
sends even when nobody is at the keyboard (`ClientStream`); and the gate on a
watch link's stream (`ViewerGate`), which passes on the handshake and the
messages that only ask for pictures, and refuses everything else.

Must not: change a message it passes (translation is the display socket's, with
`sessions.display.keyboard`), or hold more than one unfinished message, whose
size it has checked before waiting for it.
"""
from __future__ import annotations

from collections.abc import Callable
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
KEY_EVENT = 4
POINTER_EVENT = 5
UPDATE_REQUEST = 3
QEMU_MESSAGE = _QEMU

# Bounds on the messages whose length is in the message: noVNC lists about 20
# encodings; clipboard text beyond this is no visitor's paste (the page's Paste
# types, it does not use the clipboard); a screen layout names a few screens.
ENCODINGS_MAX = 256
CUT_TEXT_MAX_BYTES = 1024 * 1024
SCREENS_MAX = 16
FENCE_PAYLOAD_MAX = 64
# What the owner's viewer may send after the handshake (the allow-list): SetPixelFormat,
# SetEncodings, FramebufferUpdateRequest, KeyEvent, PointerEvent, ClientCutText,
# EnableContinuousUpdates, SetDesktopSize, and QEMU's extended key event and audio.
# (QEMU ends a connection at a fence or an xvp command: they are not passed.)
OWNER_TYPES = frozenset({0, 2, 3, 4, 5, 6, 150, 251, _QEMU})

_TYPE_NAMES = {
    0: "SetPixelFormat", 2: "SetEncodings", 3: "FramebufferUpdateRequest", 4: "KeyEvent",
    5: "PointerEvent", 6: "ClientCutText", 150: "EnableContinuousUpdates", 248: "ClientFence",
    250: "xvp", 251: "SetDesktopSize", _QEMU: "QEMU",
}


class RfbRefusedError(ValueError):
    """A client message the portal does not pass to the machine; the message is a
    sentence, `close_code` the display socket's (4400, or 4413 for one too large)."""

    close_code = 4400


class RfbTooBigError(RfbRefusedError):
    close_code = 4413


def _type_name(message_type: int) -> str:
    name = _TYPE_NAMES.get(message_type)
    return f"an RFB message of type {message_type}" + (f" ({name})" if name else "")


def _encodings_size(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """SetEncodings: a u16 count of s32."""
    if len(buffer) - offset < 4:
        return None
    count = int.from_bytes(buffer[offset + 2:offset + 4], "big")
    if count > ENCODINGS_MAX:
        raise RfbTooBigError(f"The viewer listed {count} encodings; at most {ENCODINGS_MAX} are taken.")
    return 4 + 4 * count


def _cut_text_size(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """ClientCutText: an s32 length (negative: the extended clipboard's)."""
    if len(buffer) - offset < 8:
        return None
    length = abs(int.from_bytes(buffer[offset + 4:offset + 8], "big", signed=True))
    if length > CUT_TEXT_MAX_BYTES:
        raise RfbTooBigError(f"The viewer announced {length} bytes of clipboard text; at most "
                             f"{CUT_TEXT_MAX_BYTES} are taken.")
    return 8 + length


def _fence_size(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """ClientFence: a u8 payload length at offset 8."""
    if len(buffer) - offset < 9:
        return None
    if buffer[offset + 8] > FENCE_PAYLOAD_MAX:
        raise RfbRefusedError("The viewer sent a fence with more than 64 bytes of payload.")
    return 9 + buffer[offset + 8]


def _screens_size(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """SetDesktopSize: a u8 screen count at offset 6, 16 bytes a screen."""
    if len(buffer) - offset < 8:
        return None
    if buffer[offset + 6] > SCREENS_MAX:
        raise RfbTooBigError(f"The viewer asked for a layout of {buffer[offset + 6]} screens.")
    return 8 + 16 * buffer[offset + 6]


def _qemu_size(buffer: bytes | bytearray | memoryview, offset: int) -> int | None:
    """QEMU's messages: the extended key event, and audio (enable, disable, format)."""
    available = len(buffer) - offset
    if available < 2:
        return None
    if buffer[offset + 1] == _QEMU_EXTENDED_KEY_EVENT:
        return 12
    if buffer[offset + 1] != _QEMU_AUDIO:
        raise RfbRefusedError(f"The viewer sent a QEMU message of unknown kind {buffer[offset + 1]}.")
    if available < 4:
        return None
    operation = int.from_bytes(buffer[offset + 2:offset + 4], "big")
    if operation not in {0, 1, 2}:
        raise RfbRefusedError(f"The viewer sent a QEMU audio message of unknown kind {operation}.")
    return 10 if operation == 2 else 4


_VARIABLE = {2: _encodings_size, 6: _cut_text_size, 248: _fence_size, 251: _screens_size,
             _QEMU: _qemu_size}


def message_size(buffer: bytes | bytearray | memoryview, offset: int = 0) -> int | None:
    """Bytes in the client message at `offset`; None if more are needed to tell.

    Raises RfbTooBigError for a length over its bound, RfbRefusedError for a message
    of no type this framing knows (or a QEMU message of an unknown kind).
    """
    if len(buffer) <= offset:
        return None
    message_type = buffer[offset]
    fixed = _FIXED.get(message_type)
    if fixed is not None:
        return fixed
    variable = _VARIABLE.get(message_type)
    if variable is None:
        raise RfbRefusedError(f"The viewer sent {_type_name(message_type)}, which this portal does not "
                              "pass to the machine.")
    return variable(buffer, offset)


def is_input(message: bytes) -> bool:
    """Whether a whole client message is the visitor's input (a key or the mouse)."""
    return message[0] in _INPUT_TYPES or (message[0] == _QEMU and message[1] == _QEMU_EXTENDED_KEY_EVENT)


@dataclass
class ClientStream:
    """The owner's stream, fed in order: each feed returns the whole messages it
    completed (the handshake's parts as they come, then one per client message),
    each checked against the allow-list (`OWNER_TYPES`) and its bounds; raises
    RfbRefusedError (or RfbTooBigError) at the first message it does not pass,
    after which the socket is to be closed."""

    _buffer: bytearray = field(default_factory=bytearray)
    # 0: ProtocolVersion; 1: security type (3.7, 3.8); 2: ClientInit; 3: messages.
    _stage: int = 0
    # Whether the viewer has asked for a screen update yet: what QEMU sends next is one.
    update_requested: bool = False

    def feed(self, data: bytes) -> list[bytes]:
        if self._buffer:
            self._buffer += data
            source: bytes | bytearray = self._buffer
        else:
            source = data
        messages: list[bytes] = []
        offset = 0
        total = len(source)
        while offset < total:
            if self._stage < 3:
                size = self._handshake_size(source, offset)
            else:
                message_type = source[offset]
                if message_type not in OWNER_TYPES:
                    raise RfbRefusedError(f"The viewer sent {_type_name(message_type)}, which this "
                                          "portal does not pass to the machine.")
                size = message_size(source, offset)
            if size is None or offset + size > total:
                break
            message = bytes(source[offset:offset + size])
            messages.append(message)
            if self._stage == 3:
                if message[0] == UPDATE_REQUEST:
                    self.update_requested = True
            elif self._stage == 0 and message == b"RFB 003.003\n":
                self._stage = 2  # 3.3: the server picks the security type
            else:
                self._stage += 1
            offset += size
        if source is self._buffer:
            del self._buffer[:offset]
        elif offset < total:
            self._buffer += source[offset:]
        return messages

    def _handshake_size(self, source: bytes | bytearray, offset: int) -> int | None:
        if self._stage == 0:
            if len(source) - offset < 12:
                return None
            if bytes(source[offset:offset + 12]) not in {b"RFB 003.003\n", b"RFB 003.007\n",
                                                         b"RFB 003.008\n"}:
                raise RfbRefusedError("The viewer does not speak RFB 3.3, 3.7 or 3.8.")
            return 12
        if self._stage == 1 and source[offset] == 2:
            return 17  # VNC authentication: the type and a 16-byte response
        return 1


# What a watcher's viewer may send after the handshake, by type: SetPixelFormat,
# SetEncodings, FramebufferUpdateRequest, EnableContinuousUpdates, ClientFence.
_VIEWER_TYPES = {0, 2, 3, 150, 248}
_REFUSED_WORDS = {
    4: "a key", 5: "a mouse event", 250: "a power command",
    251: "a screen size change", _QEMU: "a key or a sound request",
}


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
    # What a key message of a watcher in control becomes on its way (the display
    # socket's key translation); None: as it came.
    key_filter: Callable[[bytes], bytes] | None = None

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
                and int.from_bytes(buffer[2:4], "big") > ENCODINGS_MAX:
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
        taken = self._take(input_size)
        if self.key_filter is not None and message_type != POINTER_EVENT:
            return self.key_filter(taken)
        return taken

    def _message_size(self) -> int | None:
        try:
            return message_size(self._buffer)
        except RfbRefusedError as error:
            raise ViewerRefusedError(str(error)) from None

    def _take(self, count: int) -> bytes:
        taken = bytes(self._buffer[:count])
        del self._buffer[:count]
        return taken
