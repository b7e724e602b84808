"""The visitor's keys as the guest's layout types them.

Owns: turning the owner's key messages (QEMU's extended key event, which noVNC
sends with the keysym and the physical key's scancode, and the plain RFB
KeyEvent with a keysym alone) into the key events that reach the guest, by the
visit's key mode:

- "characters": a key that types a character (the keysym says which) becomes
  the key of the guest's layout that types it, with the Shift and AltGr that
  layout needs pressed or released around it and then put back as the visitor
  holds them; a character the guest's layout cannot type sends nothing and is
  reported. Keys that type no character (Enter, the arrows, function keys,
  anything with Ctrl, Alt or the Windows key held) pass as the physical keys.
  AltGr, Caps Lock and the visitor's dead keys themselves do not reach the guest:
  the keysym already says what they chose (a dead key's character comes with
  the next key), and a guest's own Caps Lock would turn the case back.
- "positions": every key message passes unchanged (the physical keys).

Must not: do anything with messages other than keys, or keep state beyond what
is pressed (one translator per display connection).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from sessions.display.layouts import ALTGR, LEFT_SHIFT, RIGHT_SHIFT, Layout, keysym_character
from sessions.display.rfb import KEY_EVENT, QEMU_MESSAGE

CHARACTERS = "characters"
POSITIONS = "positions"
KEY_MODES = (CHARACTERS, POSITIONS)

_EXTENDED_KEY = struct.Struct(">BBHII")
_SHIFT_KEYSYMS = {0xFFE1: LEFT_SHIFT, 0xFFE2: RIGHT_SHIFT}
# Ctrl, Alt, Meta, Super and Hyper (left and right): a key pressed with one of
# these held is a command, not a character.
_COMMAND_KEYSYMS = frozenset({0xFFE3, 0xFFE4, 0xFFE7, 0xFFE8, 0xFFE9, 0xFFEA, 0xFFEB, 0xFFEC,
                              0xFFED, 0xFFEE})
# How many pressed keys one connection remembers: a PC has about a hundred keys, and
# a client that presses ever new ones without letting go (a hostile one) must not
# make the memory grow.
HELD_MAX = 128
# AltGr as browsers report it (ISO_Level3_Shift, Mode_switch), and Caps Lock.
_SWALLOWED_KEYSYMS = frozenset({0xFE03, 0xFF7E, 0xFFE5})
# The visitor's dead keys (dead_grave ... dead_greek): the character they make with
# the next key comes as a keysym of its own; the dead key itself is no key to press.
_DEAD_KEYSYMS = (0xFE50, 0xFE8F)


def _key_message(key: int, keysym: int, *, down: bool) -> bytes:
    return _EXTENDED_KEY.pack(QEMU_MESSAGE, 0, int(down), keysym, key)


@dataclass
class KeyTranslator:
    """One display connection's keys, translated for the guest's layout."""

    layout: Layout
    # The visitor's keys held now (by keycode, or by keysym for a plain KeyEvent).
    _commands: set[int] = field(default_factory=set)
    _shifts: set[int] = field(default_factory=set)
    # Keys whose press was translated: the guest's key to release (None: nothing sent).
    _translated: dict[tuple[int, int], int | None] = field(default_factory=dict)

    def translate(self, message: bytes, mode: str) -> tuple[bytes, str | None]:
        """The bytes to send to QEMU for one whole key message, and the character the
        guest's layout cannot type (nothing is sent for it), if that was one."""
        if message[0] == KEY_EVENT:
            down, keysym = message[1] != 0, int.from_bytes(message[4:8], "big")
            identity = (0, keysym)
            physical = None
        elif message[0] == QEMU_MESSAGE and message[1] == 0:
            _, _, down_flag, keysym, physical = _EXTENDED_KEY.unpack(message)
            down = down_flag != 0
            identity = (1, physical) if physical else (0, keysym)
        else:
            return message, None
        self._held_track(keysym, identity, down=down)
        if mode != CHARACTERS:
            return message, None
        if not down and identity in self._translated:
            key = self._translated.pop(identity)
            return (b"" if key is None else _key_message(key, keysym, down=False)), None
        if keysym in _SWALLOWED_KEYSYMS or _DEAD_KEYSYMS[0] <= keysym <= _DEAD_KEYSYMS[1]:
            return b"", None
        character = keysym_character(keysym)
        if not down or character is None or self._commands:
            return message, None
        stroke = self.layout.stroke(character)
        if len(self._translated) >= HELD_MAX:
            del self._translated[next(iter(self._translated))]
        if stroke is None:
            self._translated[identity] = None
            return b"", character
        self._translated[identity] = stroke.key
        before, after = self._modifiers_around(shift=stroke.shift, altgr=stroke.altgr)
        return before + _key_message(stroke.key, keysym, down=True) + after, None

    def _held_track(self, keysym: int, identity: tuple[int, int], *, down: bool) -> None:
        if keysym in _COMMAND_KEYSYMS:
            if down and len(self._commands) >= HELD_MAX:
                self._commands.clear()
            (self._commands.add if down else self._commands.discard)(identity[1])
        elif keysym in _SHIFT_KEYSYMS:
            shift = _SHIFT_KEYSYMS[keysym]
            (self._shifts.add if down else self._shifts.discard)(shift)

    def _modifiers_around(self, *, shift: bool, altgr: bool) -> tuple[bytes, bytes]:
        """Key events that set Shift and AltGr in the guest as a stroke needs them (the
        visitor's own Shift keys reached the guest; AltGr never does), and those that
        put them back afterwards."""
        before, after = bytearray(), bytearray()
        if shift and not self._shifts:
            before += _key_message(LEFT_SHIFT, 0xFFE1, down=True)
            after += _key_message(LEFT_SHIFT, 0xFFE1, down=False)
        elif not shift:
            for held in sorted(self._shifts):
                before += _key_message(held, 0xFFE1, down=False)
                after += _key_message(held, 0xFFE1, down=True)
        if altgr:
            before += _key_message(ALTGR, 0xFE03, down=True)
            after[:0] = _key_message(ALTGR, 0xFE03, down=False)
        return bytes(before), bytes(after)
