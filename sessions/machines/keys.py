"""Typing for the visitor: text and key combinations as a PC keyboard would send them.

Owns: turning text into keystrokes on the guest's keyboard layout (the key
that types each character there, with Shift and AltGr where it needs them,
from `sessions.display.layouts`), the table of key combinations a DOS or
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

from sessions.display.layouts import Layout, character_describe, layout_for
from sessions.errors import SessionError, gettext_noop

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

# The keys pressed together: QEMU's key names (qcodes) or its key numbers (scancodes).
Keystroke = tuple[str | int, ...]


class KeysError(SessionError, ValueError):
    """Text or a combination this keyboard cannot type; the message says which."""

    code = "unsupported_keys"
    status = 400


def text_keystrokes(text: str, layout: Layout | None = None) -> list[Keystroke]:
    """The keystrokes that type text on the guest's layout (US where none is given;
    "\\r\\n" and "\\r" are Enter).

    Raises KeysError naming every character the layout (or the guest's code page) has
    no key for; then nothing is to be typed.
    """
    layout = layout or layout_for("us")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    strokes: list[Keystroke] = []
    missing: list[str] = []
    for character in text:
        stroke = layout.stroke(character)
        if stroke is not None:
            strokes.append(("shift",) * stroke.shift + ("alt_r",) * stroke.altgr + (stroke.key,))
        elif character not in missing:
            missing.append(character)
    if missing:
        shown = ", ".join(character_describe(character) for character in missing[:10])
        if len(missing) > 10:
            raise KeysError(gettext_noop("These characters cannot be typed on the machine's keyboard "
                                         "(%(layout)s layout, code page %(code_page)s): %(characters)s and "
                                         "%(more)s more. Nothing was typed."),
                            layout=layout.name, code_page=layout.code_page, characters=shown,
                            more=len(missing) - 10)
        raise KeysError(gettext_noop("These characters cannot be typed on the machine's keyboard "
                                     "(%(layout)s layout, code page %(code_page)s): %(characters)s. "
                                     "Nothing was typed."),
                        layout=layout.name, code_page=layout.code_page, characters=shown)
    return strokes


def combo_keystroke(name: str) -> Keystroke:
    keys = COMBOS.get(name.strip().lower())
    if keys is None:
        raise KeysError(gettext_noop("There is no key combination called %(name)s. These can be sent: "
                                     "%(combinations)s."),
                        name=repr(name[:40]), combinations=", ".join(COMBOS))
    return keys


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
            "keys": [{"type": "number", "data": key} if isinstance(key, int)
                     else {"type": "qcode", "data": key} for key in stroke],
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
