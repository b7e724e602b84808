"""Reading the browser's side of an RFB stream, to tell the visitor's input apart.

Owns: framing the client-to-server RFB messages (RFC 6143 and the QEMU and
common extensions noVNC uses) so that key and pointer events can be told from
housekeeping such as update requests, which a viewer sends even when nobody
is at the keyboard.

Must not: change, hold back or reorder a byte. The stream goes to QEMU as it
came; this only watches it. A message it cannot frame ends the watching (the
visit then counts as idle unless input arrives by another way), never the stream.
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
    251: 4,   # xvp
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
        if message_type == 250:  # SetDesktopSize: u8 screen count at offset 6
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
