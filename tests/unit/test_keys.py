"""Text and key combinations as a US PC keyboard types them (QEMU key names)."""
from __future__ import annotations

import pytest

from sessions.machines.keys import COMBOS, KeysError, combo_keystroke, text_keystrokes


def test_it_types_shifted_characters_with_shift_and_others_without() -> None:
    assert text_keystrokes("Hello (1+2)\n") == [
        ("shift", "h"), ("e",), ("l",), ("l",), ("o",), ("spc",), ("shift", "9"), ("1",),
        ("shift", "equal"), ("2",), ("shift", "0"), ("ret",),
    ]


def test_every_printable_ascii_character_has_exactly_one_keystroke() -> None:
    printable = "".join(chr(code) for code in range(32, 127))
    strokes = text_keystrokes(printable)
    assert len(strokes) == len(printable)
    # No two characters share a keystroke.
    assert len(set(strokes)) == len(printable)


def test_windows_line_ends_are_one_enter() -> None:
    assert text_keystrokes("a\r\nb\rc") == [("a",), ("ret",), ("b",), ("ret",), ("c",)]


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
