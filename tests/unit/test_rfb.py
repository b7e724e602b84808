"""Telling the visitor's input from a viewer's housekeeping in the browser's RFB stream."""
from __future__ import annotations

import struct

import pytest

from sessions.display.rfb import ClientStream, RfbRefusedError, RfbTooBigError, is_input

HANDSHAKE_38 = b"RFB 003.008\n" + bytes([1]) + bytes([1])  # security None, shared
UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 640, 480)
SET_ENCODINGS = struct.pack(">BBH", 2, 0, 3) + struct.pack(">iii", 0, 7, -223)
KEY = struct.pack(">BBxxI", 4, 1, 0x61)
POINTER = struct.pack(">BBHH", 5, 0, 10, 20)
QEMU_KEY = struct.pack(">BBHII", 255, 0, 1, 0x61, 30)
CUT_TEXT = struct.pack(">Bxxxi", 6, 5) + b"hello"
PIXEL_FORMAT = b"\x00\x00\x00\x00" + struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
CONTINUOUS = struct.pack(">BBHHHH", 150, 1, 0, 0, 640, 480)
FENCE = struct.pack(">BxxxIB", 248, 0, 4) + b"abcd"
CLIPBOARD_CAPS = struct.pack(">Bxxxi", 6, -8) + struct.pack(">II", 0x1000001, 1024)
XVP_SHUTDOWN = struct.pack(">BxBB", 250, 1, 2)
DESKTOP_SIZE = struct.pack(">BxHHBx", 251, 800, 600, 1) + bytes(16)
QEMU_AUDIO = struct.pack(">BBH", 255, 1, 0)


def said_input(stream: ClientStream, data: bytes) -> bool:
    return any(is_input(message) for message in stream.feed(data) if len(message) in {6, 8, 12})


def test_it_sees_no_input_in_a_viewer_that_only_asks_for_updates() -> None:
    stream = ClientStream()
    assert not said_input(stream, HANDSHAKE_38 + SET_ENCODINGS + UPDATE_REQUEST * 50)
    assert stream.update_requested


def test_it_sees_keys_pointer_and_qemu_key_events() -> None:
    for message in (KEY, POINTER, QEMU_KEY):
        stream = ClientStream()
        assert not said_input(stream, HANDSHAKE_38 + UPDATE_REQUEST)
        assert said_input(stream, message)


def test_it_passes_every_message_whole_and_unchanged_however_the_stream_is_split() -> None:
    data = HANDSHAKE_38 + SET_ENCODINGS + CUT_TEXT + UPDATE_REQUEST + KEY + UPDATE_REQUEST + QEMU_AUDIO
    expected = [b"RFB 003.008\n", b"\x01", b"\x01", SET_ENCODINGS, CUT_TEXT, UPDATE_REQUEST, KEY,
                UPDATE_REQUEST, QEMU_AUDIO]
    for cut in range(1, len(data)):
        stream = ClientStream()
        assert stream.feed(data[:cut]) + stream.feed(data[cut:]) == expected, cut


def test_it_does_not_take_clipboard_text_for_a_key() -> None:
    stream = ClientStream()
    # The pasted text holds a byte that looks like a KeyEvent's type.
    assert not said_input(stream, HANDSHAKE_38 + struct.pack(">Bxxxi", 6, 8) + b"\x04" * 8 + UPDATE_REQUEST)


@pytest.mark.parametrize("message", [bytes([77, 1, 2, 3]), FENCE, XVP_SHUTDOWN,
                                     struct.pack(">BBH", 255, 9, 0), struct.pack(">BBH", 255, 1, 7)])
def test_it_refuses_a_message_the_allow_list_does_not_name(message: bytes) -> None:
    stream = ClientStream()
    stream.feed(HANDSHAKE_38)
    with pytest.raises(RfbRefusedError) as refused:
        stream.feed(message)
    assert refused.value.close_code == 4400
    assert "viewer" in str(refused.value)


@pytest.mark.parametrize("message", [
    struct.pack(">Bxxxi", 6, 100 * 1024 * 1024),          # 100 MB of clipboard text announced
    struct.pack(">Bxxxi", 6, -(2**31)),                   # the extended clipboard's, as large
    struct.pack(">BBH", 2, 0, 65535),                     # 65535 encodings
    struct.pack(">BxHHBx", 251, 800, 600, 255),           # 255 screens
])
def test_it_refuses_an_absurd_length_before_waiting_for_it(message: bytes) -> None:
    stream = ClientStream()
    stream.feed(HANDSHAKE_38)
    with pytest.raises(RfbTooBigError) as refused:
        stream.feed(message)
    assert refused.value.close_code == 4413


def test_it_reads_the_older_handshakes_and_refuses_other_protocols() -> None:
    assert ClientStream().feed(b"RFB 003.003\n" + bytes([1]) + KEY)[-1] == KEY
    with_password = b"RFB 003.008\n" + bytes([2]) + bytes(16) + bytes([1])
    assert ClientStream().feed(with_password + POINTER)[-1] == POINTER
    with pytest.raises(RfbRefusedError):
        ClientStream().feed(b"GET / HTTP/1.1\r\n")


# --- A watch link's stream: only what a viewer needs goes on ---------------------



def test_a_viewer_gate_passes_the_handshake_and_picture_requests_byte_for_byte() -> None:
    from sessions.display.rfb import ViewerGate

    viewer = HANDSHAKE_38 + PIXEL_FORMAT + SET_ENCODINGS + UPDATE_REQUEST + CONTINUOUS + FENCE
    for cut in range(1, len(viewer)):
        gate = ViewerGate()
        assert gate.feed(viewer[:cut]) + gate.feed(viewer[cut:]) == viewer, cut


def test_a_viewer_gate_refuses_every_kind_of_input() -> None:
    from sessions.display.rfb import ViewerGate, ViewerRefusedError

    for message in (KEY, POINTER, QEMU_KEY, XVP_SHUTDOWN, DESKTOP_SIZE, QEMU_AUDIO, bytes([77, 0, 0, 0])):
        gate = ViewerGate()
        passed = gate.feed(HANDSHAKE_38 + UPDATE_REQUEST)
        with pytest.raises(ViewerRefusedError) as refused:
            gate.feed(message[:1])
        assert "watch link" in str(refused.value)
        assert passed == HANDSHAKE_38 + UPDATE_REQUEST


def test_a_viewer_gate_drops_clipboard_text_however_it_is_split() -> None:
    from sessions.display.rfb import ViewerGate

    data = HANDSHAKE_38 + CLIPBOARD_CAPS + CUT_TEXT + struct.pack(">Bxxxi", 6, 6) + b"\x04\x05" * 3 \
        + UPDATE_REQUEST
    for cut in range(1, len(data)):
        gate = ViewerGate()
        assert gate.feed(data[:cut]) + gate.feed(data[cut:]) == HANDSHAKE_38 + UPDATE_REQUEST, cut


def test_a_viewer_gate_makes_every_watcher_shared_and_refuses_passwords() -> None:
    from sessions.display.rfb import ViewerGate, ViewerRefusedError

    assert ViewerGate().feed(b"RFB 003.008\n\x01\x00") == b"RFB 003.008\n\x01\x01"
    assert ViewerGate().feed(b"RFB 003.003\n\x00") == b"RFB 003.003\n\x01"
    with pytest.raises(ViewerRefusedError):
        ViewerGate().feed(b"RFB 003.008\n\x02" + bytes(16))
    with pytest.raises(ViewerRefusedError):
        ViewerGate().feed(b"HTTP/1.1 200")


def test_a_viewer_gate_passes_input_only_while_its_watcher_has_control() -> None:
    from sessions.display.rfb import ViewerGate, ViewerRefusedError

    gate = ViewerGate()
    gate.feed(HANDSHAKE_38)
    gate.control = True
    data = KEY + POINTER + QEMU_KEY + UPDATE_REQUEST
    passed = b"".join(gate.feed(data[index:index + 1]) for index in range(len(data)))
    assert passed == data
    assert gate.feed(KEY) == KEY
    assert gate.saw_input
    assert gate.feed(UPDATE_REQUEST) == UPDATE_REQUEST
    assert not gate.saw_input
    with pytest.raises(ViewerRefusedError):  # control is the keyboard and mouse, not power
        gate.feed(XVP_SHUTDOWN)
    gate = ViewerGate()
    gate.feed(HANDSHAKE_38)
    gate.control = True
    gate.feed(KEY)
    gate.control = False
    with pytest.raises(ViewerRefusedError):
        gate.feed(KEY)


def test_a_watcher_in_control_has_its_keys_translated_as_the_owners_are() -> None:
    from sessions.display.rfb import ViewerGate

    gate = ViewerGate()
    gate.feed(HANDSHAKE_38)
    gate.control = True
    gate.key_filter = lambda message: b"<" + message + b">"
    assert gate.feed(KEY + POINTER + QEMU_KEY) == b"<" + KEY + b">" + POINTER + b"<" + QEMU_KEY + b">"
