"""The visitor's keys as the guest's layout types them: what a key message becomes
on its way to QEMU, in each key mode, from keyboards whose keys print other
characters than the guest's."""
from __future__ import annotations

import struct

import pytest

from sessions.display.keyboard import CHARACTERS, POSITIONS, KeyTranslator
from sessions.display.layouts import LayoutError, keysym_character, layout_for

SHIFT_L, SHIFT_KEYSYM = 0x2A, 0xFFE1
ALTGR, ALTGR_KEYSYM = 0xB8, 0xFE03
CTRL_L, CTRL_KEYSYM = 0x1D, 0xFFE3


def key(keysym: int, keycode: int, *, down: bool) -> bytes:
    """QEMU's extended key event as noVNC sends it."""
    return struct.pack(">BBHII", 255, 0, int(down), keysym, keycode)


def events(data: bytes) -> list[tuple[str, int]]:
    """Extended key events as ("down"|"up", scancode)."""
    assert len(data) % 12 == 0
    return [("down" if data[index + 3] else "up", int.from_bytes(data[index + 8:index + 12], "big"))
            for index in range(0, len(data), 12)]


def typed(translator: KeyTranslator, presses: list[tuple[int, int, bool]], mode: str = CHARACTERS
          ) -> tuple[list[tuple[str, int]], list[str]]:
    sent: list[tuple[str, int]] = []
    refused: list[str] = []
    for keysym, keycode, down in presses:
        data, untypable = translator.translate(key(keysym, keycode, down=down), mode)
        sent += events(data)
        if untypable:
            refused.append(untypable)
    return sent, refused


def test_a_german_visitors_shift_7_reaches_a_us_guest_as_slash_without_shift() -> None:
    translator = KeyTranslator(layout_for("us"))
    sent, _ = typed(translator, [(SHIFT_KEYSYM, SHIFT_L, True), (ord("/"), 0x08, True),
                                 (ord("/"), 0x08, False), (SHIFT_KEYSYM, SHIFT_L, False)])
    assert sent == [("down", SHIFT_L), ("up", SHIFT_L), ("down", 0x35), ("down", SHIFT_L),
                    ("up", 0x35), ("up", SHIFT_L)]


def test_azerty_and_qwertz_letters_arrive_as_the_letters_printed_on_them() -> None:
    translator = KeyTranslator(layout_for("us"))
    # AZERTY's A is where QWERTY has Q (0x10); QWERTZ's Z where QWERTY has Y (0x15).
    sent, _ = typed(translator, [(ord("a"), 0x10, True), (ord("a"), 0x10, False),
                                 (ord("z"), 0x15, True), (ord("z"), 0x15, False)])
    assert sent == [("down", 0x1E), ("up", 0x1E), ("down", 0x2C), ("up", 0x2C)]


def test_a_character_that_needs_altgr_on_the_guest_gets_it_and_altgr_itself_does_not_reach_it() -> None:
    translator = KeyTranslator(layout_for("de"))
    # A US visitor's "@" (Shift+2) into a German guest: AltGr+Q, with Shift released around it.
    sent, _ = typed(translator, [(SHIFT_KEYSYM, SHIFT_L, True), (ord("@"), 0x03, True),
                                 (ord("@"), 0x03, False), (SHIFT_KEYSYM, SHIFT_L, False)])
    assert sent == [("down", SHIFT_L), ("up", SHIFT_L), ("down", ALTGR), ("down", 0x10), ("up", ALTGR),
                    ("down", SHIFT_L), ("up", 0x10), ("up", SHIFT_L)]
    # A French visitor's AltGr+0 for "@" into a US guest: no AltGr, Shift+2.
    translator = KeyTranslator(layout_for("us"))
    sent, _ = typed(translator, [(ALTGR_KEYSYM, ALTGR, True), (ord("@"), 0x0B, True), (ord("@"), 0x0B, False),
                                 (ALTGR_KEYSYM, ALTGR, False)])
    assert sent == [("down", SHIFT_L), ("down", 0x03), ("up", SHIFT_L), ("up", 0x03)]


def test_accented_letters_arrive_where_the_guest_has_them_and_are_reported_where_not() -> None:
    translator = KeyTranslator(layout_for("de"))
    sent, refused = typed(translator, [(0xFC, 0x1A, True), (0xFC, 0x1A, False),   # ü
                                       (0xE9, 0x03, True), (0xE9, 0x03, False),   # é
                                       (0x20AC, 0x12, True), (0x20AC, 0x12, False)])  # €
    assert sent == [("down", 0x1A), ("up", 0x1A)]
    assert refused == ["é", "€"]
    sent, refused = typed(KeyTranslator(layout_for("fr")), [(0xE9, 0x1A, True), (0xE9, 0x1A, False)])
    assert sent == [("down", 0x03), ("up", 0x03)]
    assert not refused


def test_keys_that_type_no_character_and_commands_pass_as_the_physical_keys() -> None:
    translator = KeyTranslator(layout_for("de"))
    enter, f1, left = key(0xFF0D, 0x1C, down=True), key(0xFFBE, 0x3B, down=True), key(0xFF51, 0xCB, down=True)
    for message in (enter, f1, left):
        assert translator.translate(message, CHARACTERS) == (message, None)
    # Ctrl+Z on a QWERTZ keyboard is the key the guest calls Y: commands go by position.
    ctrl = key(CTRL_KEYSYM, CTRL_L, down=True)
    assert translator.translate(ctrl, CHARACTERS) == (ctrl, None)
    z = key(ord("z"), 0x15, down=True)
    assert translator.translate(z, CHARACTERS) == (z, None)


def test_a_visitors_dead_key_sends_nothing_and_its_accented_letter_arrives() -> None:
    translator = KeyTranslator(layout_for("fr"))
    # A French visitor's ^ (dead) then e: the browser gives dead_circumflex, then ê;
    # on a French guest without dead keys ê has no key of its own.
    sent, refused = typed(translator, [(0xFE52, 0x1A, True), (0xFE52, 0x1A, False),
                                       (0xEA, 0x12, True), (0xEA, 0x12, False)])
    assert sent == []
    assert refused == ["ê"]
    sent, refused = typed(KeyTranslator(layout_for("de")), [(0xFE52, 0x29, True), (0xFE52, 0x29, False),
                                                            (0xFC, 0x16, True), (0xFC, 0x16, False)])
    assert sent == [("down", 0x1A), ("up", 0x1A)]  # ü, composed on the visitor's side


def test_keys_by_position_pass_every_key_unchanged() -> None:
    translator = KeyTranslator(layout_for("us"))
    for message in (key(SHIFT_KEYSYM, SHIFT_L, down=True), key(ord("/"), 0x08, down=True),
                    key(ALTGR_KEYSYM, ALTGR, down=True), key(0x20AC, 0x12, down=True)):
        assert translator.translate(message, POSITIONS) == (message, None)


def test_a_plain_rfb_key_event_is_translated_too() -> None:
    translator = KeyTranslator(layout_for("fr"))
    data, _ = translator.translate(struct.pack(">BBxxI", 4, 1, ord("q")), CHARACTERS)
    assert events(data) == [("down", 0x1E)]  # AZERTY's Q is where QWERTY has A
    data, _ = translator.translate(struct.pack(">BBxxI", 4, 0, ord("q")), CHARACTERS)
    assert events(data) == [("up", 0x1E)]


def test_a_keysym_that_maps_to_nothing_is_neither_a_character_nor_an_error() -> None:
    for keysym in (0, 0x7F, 0xFFFFFFFF, 0x0100D800, 0x12345678):
        assert keysym_character(keysym) is None
        data, untypable = KeyTranslator(layout_for("us")).translate(key(keysym, 0x10, down=True), CHARACTERS)
        assert data == key(keysym, 0x10, down=True)
        assert untypable is None


def test_a_burst_of_keys_leaves_nothing_held_that_the_visitor_let_go() -> None:
    translator = KeyTranslator(layout_for("de"))
    held: set[int] = set()
    text = "Grüße, Straße! A/b@c €"  # with Shift, AltGr, and a character the guest lacks
    for index in range(50_000):
        character = text[index % len(text)]
        for down in (True, False):
            data, _ = translator.translate(key(ord(character), 0x10 + index % 30, down=down), CHARACTERS)
            for state, scancode in events(data):
                (held.add if state == "down" else held.discard)(scancode)
    assert not held


def test_keys_pressed_and_never_let_go_hold_a_bounded_memory() -> None:
    translator = KeyTranslator(layout_for("us"))
    for keycode in range(1, 50_001):
        translator.translate(key(ord("a"), keycode, down=True), CHARACTERS)
    assert len(translator._translated) == 128
    for keycode in range(1, 50_001):
        translator.translate(key(0xFFE3, keycode, down=True), CHARACTERS)  # Ctrl
    assert len(translator._translated) <= 128
    assert len(translator._commands) <= 128


def test_an_unknown_layout_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(LayoutError, match="us, uk, de, fr"):
        layout_for("klingon")
