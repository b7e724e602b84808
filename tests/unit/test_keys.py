"""Text and key combinations as the guest's keyboard types them (QEMU key numbers
from its keymaps, and QEMU key names for the modifiers and combinations)."""
from __future__ import annotations

import pytest

from sessions.display.layouts import layout_for
from sessions.machines.keys import COMBOS, KeysError, combo_keystroke, text_keystrokes


def test_it_types_shifted_characters_with_shift_and_others_without() -> None:
    # PC scancodes: h 0x23, e 0x12, l 0x26, o 0x18, space 0x39, 9 0x0a, 1 0x02, = 0x0d, 2 0x03, 0 0x0b.
    assert text_keystrokes("Hello (1+2)\n") == [
        ("shift", 0x23), (0x12,), (0x26,), (0x26,), (0x18,), (0x39,), ("shift", 0x0A), (0x02,),
        ("shift", 0x0D), (0x03,), ("shift", 0x0B), (0x1C,),
    ]


def test_it_types_on_the_guests_layout_with_altgr_where_it_needs_it() -> None:
    german = layout_for("de")
    # ü 0x1a, ß 0x0c; "/" is Shift+7 (0x08), "@" AltGr+Q (0x10), "z" the key a US PC calls Y (0x15).
    assert text_keystrokes("Grüße/@z", german) == [
        ("shift", 0x22), (0x13,), (0x1A,), (0x0C,), (0x12,), ("shift", 0x08), ("alt_r", 0x10), (0x15,)]
    french = layout_for("fr")
    assert text_keystrokes("aé1", french) == [(0x10,), (0x03,), ("shift", 0x02)]


def test_it_names_what_the_guests_layout_or_code_page_cannot_type_and_types_nothing() -> None:
    with pytest.raises(KeysError) as refused:
        text_keystrokes("5 € and ñ", layout_for("de"))
    message = str(refused.value)
    assert "'€' (U+20AC)" in message
    assert "'ñ' (U+00F1)" in message
    assert "de layout" in message
    assert text_keystrokes("ñ", layout_for("es")) == [(0x27,)]


def test_every_printable_ascii_character_has_exactly_one_keystroke() -> None:
    printable = "".join(chr(code) for code in range(32, 127))
    strokes = text_keystrokes(printable)
    assert len(strokes) == len(printable)
    # No two characters share a keystroke.
    assert len(set(strokes)) == len(printable)


def test_windows_line_ends_are_one_enter() -> None:
    assert text_keystrokes("a\r\nb\rc") == [(0x1E,), (0x1C,), (0x30,), (0x1C,), (0x2E,)]


def test_it_names_each_character_it_cannot_type_once() -> None:
    with pytest.raises(KeysError) as refused:
        text_keystrokes("naïve café, naïve")
    message = str(refused.value)
    assert "'ï' (U+00EF)" in message
    assert "'é' (U+00E9)" in message
    assert message.count("U+00EF") == 1
    with pytest.raises(KeysError, match=r"U\+0007"):
        text_keystrokes("bell\a")


def test_it_knows_the_combinations_a_dos_or_windows_user_needs() -> None:
    assert combo_keystroke("ctrl-alt-delete") == ("ctrl", "alt", "delete")
    assert combo_keystroke("Alt-Tab") == ("alt", "tab")
    assert combo_keystroke("ctrl-break") == ("ctrl", "pause")
    for name in ("alt-f4", "ctrl-c", "alt-enter", "ctrl-esc", "print-screen"):
        assert name in COMBOS
    with pytest.raises(KeysError, match="ctrl-alt-delete"):
        combo_keystroke("ctrl-alt-explode")
