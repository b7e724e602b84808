"""Typing for the visitor: text and key combinations as a PC keyboard would send them.

Owns: turning text into keystrokes on a US keyboard (QEMU's key names, with
Shift where the character needs it), the table of key combinations a DOS or
Windows 3.1 user needs, and sending keystrokes to a machine over QMP at a
pace the guest keeps up with: each key held for a moment (`send-key` with
`hold-time`), a pause between keys, and, when the guest uses the BIOS's
keyboard buffer (DOS does; it holds 15 keys), a wait while that buffer is
nearly full, so a busy program loses no key.

Must not: import Django or decide who may type; it takes the machine and the
pace as arguments (the broker checks the visit and counts typing as input).
"""
from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sessions.errors import SessionError

# Characters on a US keyboard without Shift, by QEMU key name (qcode).
_PLAIN = {
    **{letter: letter for letter in "abcdefghijklmnopqrstuvwxyz"},
    **{digit: digit for digit in "0123456789"},
    " ": "spc", "\n": "ret", "\t": "tab",
    "`": "grave_accent", "-": "minus", "=": "equal", "[": "bracket_left",
    "]": "bracket_right", "\\": "backslash", ";": "semicolon", "'": "apostrophe",
    ",": "comma", ".": "dot", "/": "slash",
}
# Characters that need Shift, by the key they are on.
_SHIFTED = {
    **{letter.upper(): letter for letter in "abcdefghijklmnopqrstuvwxyz"},
    "~": "grave_accent", "!": "1", "@": "2", "#": "3", "$": "4", "%": "5", "^": "6",
    "&": "7", "*": "8", "(": "9", ")": "0", "_": "minus", "+": "equal",
    "{": "bracket_left", "}": "bracket_right", "|": "backslash", ":": "semicolon",
    '"': "apostrophe", "<": "comma", ">": "dot", "?": "slash",
}

#: The key combinations the API takes (`{"combo": name}`), as QEMU key names
#: pressed together in this order and released together.
COMBOS: dict[str, tuple[str, ...]] = {
    "ctrl-alt-delete": ("ctrl", "alt", "delete"),
    "ctrl-c": ("ctrl", "c"),
    # Ctrl+Pause is Break: QEMU's keyboard sends the Break scancodes for it.
    "ctrl-break": ("ctrl", "pause"),
    "ctrl-z": ("ctrl", "z"),
    "ctrl-esc": ("ctrl", "esc"),
    "alt-tab": ("alt", "tab"),
    "alt-esc": ("alt", "esc"),
    "alt-f4": ("alt", "f4"),
    "alt-enter": ("alt", "ret"),
    "alt-space": ("alt", "spc"),
    "print-screen": ("print",),
    "alt-print-screen": ("alt", "print"),
    "escape": ("esc",),
    "f1": ("f1",),
}

Keystroke = tuple[str, ...]


class KeysError(SessionError, ValueError):
    """Text or a combination this keyboard cannot type; the message says which."""

    code = "unsupported_keys"
    status = 400


def text_keystrokes(text: str) -> list[Keystroke]:
    """The keystrokes that type text on a US keyboard ("\\r\\n" and "\\r" are Enter).

    Raises KeysError naming every character there is no key for.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    strokes: list[Keystroke] = []
    missing: list[str] = []
    for character in text:
        if character in _PLAIN:
            strokes.append((_PLAIN[character],))
        elif character in _SHIFTED:
            strokes.append(("shift", _SHIFTED[character]))
        elif character not in missing:
            missing.append(character)
    if missing:
        shown = ", ".join(_describe(character) for character in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise KeysError(f"These characters have no key on the machine's US keyboard: {shown}{more}. "
                        "Letters, digits, space, Enter, Tab and the punctuation printed on a US "
                        "keyboard can be typed.")
    return strokes


def combo_keystroke(name: str) -> Keystroke:
    keys = COMBOS.get(name.strip().lower())
    if keys is None:
        raise KeysError(f"There is no key combination called {name[:40]!r}. "
                        f"These can be sent: {', '.join(COMBOS)}.")
    return keys


def _describe(character: str) -> str:
    code = f"U+{ord(character):04X}"
    return code if not character.isprintable() else f"{character!r} ({code})"


class KeyedMachine(Protocol):
    async def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any: ...


@dataclass(frozen=True)
class TypingPace:
    # How long each key is held down, and the pause after a keystroke.
    hold_ms: int = 10
    interval_s: float = 0.01
    # How long to wait, at most, for a guest to take keys from a nearly full
    # BIOS buffer before typing on regardless (a program that reads the keyboard
    # its own way, as Windows does, leaves the buffer as it is).
    buffer_wait_s: float = 2.0
    # How long to wait, at most, for the BIOS to store a key typed; a guest
    # that stores none in that time is typed to at the plain pace from then on.
    arrival_wait_s: float = 1.0


# The BIOS data area's keyboard buffer: head and tail offsets (0x41A, 0x41C) into
# 0x41E..0x43E, 2 bytes a key; it holds 15 keys. Typing waits from BUFFER_FULL on.
_BUFFER_START, _BUFFER_END = 0x1E, 0x3E
BUFFER_FULL = 10
_POLL_S = 0.004


async def bios_buffer(machine: KeyedMachine) -> tuple[int, int] | None:
    """The BIOS keyboard buffer's head and tail, or None when the memory there does
    not look like one (a guest that never set it up)."""
    output = str(await machine.execute("human-monitor-command",
                                       {"command-line": "xp /2hx 0x41a"}))
    values = [int(value, 16) for value in re.findall(r"0x([0-9a-f]{4})\b", output)]
    if len(values) != 2:
        return None
    if not all(_BUFFER_START <= value < _BUFFER_END and value % 2 == 0 for value in values):
        return None
    return values[0], values[1]


def _waiting(buffer: tuple[int, int]) -> int:
    head, tail = buffer
    return ((tail - head) % (_BUFFER_END - _BUFFER_START)) // 2


async def keystrokes_send(machine: KeyedMachine, strokes: list[Keystroke], *, pace: TypingPace,
                          stored: bool = True) -> None:
    """Press each keystroke in turn (its keys down together, then up), paced.

    With `stored` (each keystroke types a character, as text does), the next key
    goes only once the guest's BIOS has stored the last one (its buffer's tail
    moved): a guest busy with interrupts off (scrolling the screen in software
    emulation) does not read the keyboard, and the keyboard holds only a few
    keys before it drops them. A guest whose BIOS stores nothing (Windows reads
    the keyboard itself) is typed to at the plain pace.
    """
    loop = asyncio.get_running_loop()
    watch = stored
    for stroke in strokes:
        before = await _buffer_room(machine, pace) if watch else None
        sent = loop.time()
        await machine.execute("send-key", {
            "keys": [{"type": "qcode", "data": key} for key in stroke],
            "hold-time": pace.hold_ms,
        })
        if before is not None:
            watch = await _stored(machine, before, pace)
        # QEMU queues the key's presses and releases with the hold time between
        # them and answers at once: the pause covers that time too.
        done = sent + pace.interval_s + 2 * len(stroke) * pace.hold_ms / 1000
        await asyncio.sleep(max(0.0, done - loop.time()))


async def _buffer_room(machine: KeyedMachine, pace: TypingPace) -> tuple[int, int] | None:
    """The buffer once it has room for a key (or after waiting buffer_wait_s for it)."""
    deadline = time.monotonic() + pace.buffer_wait_s
    while True:
        buffer = await bios_buffer(machine)
        if buffer is None or _waiting(buffer) < BUFFER_FULL or time.monotonic() >= deadline:
            return buffer
        await asyncio.sleep(pace.interval_s)


async def _stored(machine: KeyedMachine, before: tuple[int, int], pace: TypingPace) -> bool:
    """Wait until the BIOS has stored the key (the tail moved); False if it never did."""
    deadline = time.monotonic() + pace.arrival_wait_s
    while time.monotonic() < deadline:
        buffer = await bios_buffer(machine)
        if buffer is None:
            return False
        if buffer[1] != before[1]:
            return True
        await asyncio.sleep(_POLL_S)
    return False
