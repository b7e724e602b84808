"""Keyboard layouts: which key, with which modifiers, types a character on a guest's
keyboard, and which character an X11 keysym (what noVNC sends beside a key) is.

Owns: reading QEMU's keymaps (Debian's qemu-system-data, /usr/share/qemu/keymaps:
X11 keysym names to PC scancodes with `shift` and `altgr` flags, and `include`
lines) into `Layout` tables of characters, and reading X11's keysym table
(Debian's x11proto-dev, /usr/include/X11/keysymdef.h: names, values and the
Unicode character each stands for). A layout also knows the guest's DOS code
page: a character the code page has no byte for cannot appear in the guest
whatever its keys, so it is not typable (the euro sign on a German DOS).

Must not: hold hand-written layout tables (the keymaps are the description;
docs/curators.md lists where a DOS KEYB layout differs from them) or import
anything of the portal but its plain profile.
"""
from __future__ import annotations

import codecs
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from portal.profile import KEYBOARD_LAYOUTS

KEYMAPS_DIR = Path("/usr/share/qemu/keymaps")
KEYSYMDEF = Path("/usr/include/X11/keysymdef.h")

# The PC's keys a layout's characters need besides their own (QEMU's key numbers:
# the XT scancode, 0x80 added for an 0xE0-prefixed key).
LEFT_SHIFT = 0x2A
RIGHT_SHIFT = 0x36
ALTGR = 0xB8  # right Alt
ENTER = 0x1C
TAB = 0x0F

_DEFINE = re.compile(r"^#define XK_(\w+)\s+0x([0-9a-fA-F]+)\s*(?:/\*\s*(?:\(?U\+([0-9A-Fa-f]{4,6}))?)?")
# Keys a layout's keymap names that its PCs do not have: QEMU's keymaps describe
# the 105-key PC, but a US PC has 104 keys, without the one beside the left Shift
# (0x56), which a US BIOS and DOS read as a second backslash key, not as "<" and
# ">" as X11's us layout on a 105-key PC does (docs/curators.md lists the differences).
_KEYS_ABSENT = {"us": frozenset({0x56})}
# The DOS code pages' glyphs for the control bytes 0x14 and 0x15 (¶ and §), which
# Python's codecs read as control characters; KEYB types them (German Shift+3: §).
_CODE_PAGE_GLYPHS = {"\u00b6": 0x14, "\u00a7": 0x15}


@dataclass(frozen=True)
class Stroke:
    """The key that types a character, and the modifiers it needs held."""

    key: int
    shift: bool = False
    altgr: bool = False


class LayoutError(ValueError):
    """A layout that cannot be read; the message is a sentence."""


@functools.cache
def _keysyms() -> tuple[dict[str, int], dict[int, str]]:
    """X11's keysyms: value by name, and the character by value (where one is named)."""
    try:
        text = KEYSYMDEF.read_text(encoding="latin-1")
    except OSError as error:
        raise LayoutError(f"X11's keysym table {KEYSYMDEF} cannot be read (install x11proto-dev): "
                          f"{error}") from error
    values: dict[str, int] = {}
    characters: dict[int, str] = {}
    for line in text.splitlines():
        match = _DEFINE.match(line)
        if match is None:
            continue
        name, value, code = match.group(1), int(match.group(2), 16), match.group(3)
        values.setdefault(name, value)
        if code is not None:
            characters.setdefault(value, chr(int(code, 16)))
    return values, characters


def keysym_character(keysym: int) -> str | None:
    """The character a keysym types, or None for a key that types none (Enter, F1,
    the arrows, the modifiers, the keypad's keys)."""
    if 0x20 <= keysym <= 0x7E or 0xA0 <= keysym <= 0xFF:
        return chr(keysym)
    if keysym & 0xFF000000 == 0x01000000:
        code = keysym & 0x00FFFFFF
        printable = 0x20 <= code <= 0x10FFFF and not 0x7F <= code < 0xA0 and not 0xD800 <= code < 0xE000
        return chr(code) if printable else None
    if 0xFF00 <= keysym <= 0xFFFF:
        return None  # function, cursor, keypad and modifier keys
    return _keysyms()[1].get(keysym)


def _name_character(name: str) -> str | None:
    """The character a keymap's keysym name types, or None for a key that types none."""
    if re.fullmatch(r"U[0-9A-Fa-f]{4,6}", name):
        code = int(name[1:], 16)
        return chr(code) if code >= 0x20 else None
    if re.fullmatch(r"0x[0-9a-fA-F]+", name):
        return keysym_character(int(name, 16))
    value = _keysyms()[0].get(name)
    return None if value is None else keysym_character(value)


def _keymap_lines(name: str, seen: frozenset[str] = frozenset()) -> list[list[str]]:
    """A keymap's entries (name, key, flags...), its `include`s first."""
    if name in seen or not re.fullmatch(r"[a-z-]+", name):
        raise LayoutError(f"The keymap {name!r} includes itself or is not a keymap's name.")
    path = KEYMAPS_DIR / name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LayoutError(f"QEMU's keymap {path} cannot be read (install qemu-system-data): "
                          f"{error}") from error
    entries: list[list[str]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words or words[0] == "map":
            continue
        if words[0] == "include" and len(words) == 2:
            entries += _keymap_lines(words[1], seen | {name})
        elif len(words) >= 2:
            entries.append(words)
    return entries


@dataclass(frozen=True)
class Layout:
    """A guest's keyboard layout: the stroke for each character it types."""

    name: str
    code_page: int
    characters: dict[str, Stroke]

    def stroke(self, character: str) -> Stroke | None:
        return self.characters.get(character)


def _code_page_has(character: str, code_page: int) -> bool:
    if ord(character) < 0x80 or (character in _CODE_PAGE_GLYPHS and code_page in {437, 850}):
        return True
    try:
        character.encode(f"cp{code_page}")
    except (LookupError, UnicodeEncodeError):
        return False
    return True


@functools.cache
def layout_for(name: str, code_page: int = 437) -> Layout:
    """The layout by the portal's name ("de"), for a guest with that DOS code page.

    Raises LayoutError for an unknown name (naming the known ones) or an unreadable keymap.
    """
    keymap = KEYBOARD_LAYOUTS.get(name)
    if keymap is None:
        raise LayoutError(f"There is no keyboard layout called {name[:40]!r}; these are known: "
                          f"{', '.join(KEYBOARD_LAYOUTS)}.")
    characters: dict[str, Stroke] = {"\n": Stroke(ENTER), "\t": Stroke(TAB)}
    absent = _KEYS_ABSENT.get(name, frozenset())
    for words in _keymap_lines(keymap):
        try:
            key = int(words[1], 16)
        except ValueError:
            continue
        if key in absent:
            continue
        flags = set(words[2:])
        if not flags <= {"shift", "altgr", "addupper"} or key >= 0x80:
            continue  # the keypad (numlock), Ctrl combinations, and the 0xE0 keys type no text
        character = _name_character(words[0])
        if character is None or not _code_page_has(character, code_page):
            continue
        stroke = Stroke(key, shift="shift" in flags, altgr="altgr" in flags)
        _keep(characters, character, stroke)
        if "addupper" in flags and character.upper() != character:
            _keep(characters, character.upper(), Stroke(key, shift=True))
    return Layout(name=name, code_page=code_page, characters=characters)


def _keep(characters: dict[str, Stroke], character: str, stroke: Stroke) -> None:
    """Keep the simplest stroke for a character (fewest modifiers, then the first listed)."""
    known = characters.get(character)
    if known is None or (stroke.shift + stroke.altgr) < (known.shift + known.altgr):
        characters[character] = stroke


def code_page_number(code_page: object) -> int:
    """An exhibit's DOS code page as a number the codecs know, 437 where it names none."""
    try:
        number = int(str(code_page))
        codecs.lookup(f"cp{number}")
    except (LookupError, ValueError):
        return 437
    return number


def character_describe(character: str) -> str:
    """A character as a sentence names it: 'é' (U+00E9), or U+0007 for one unprintable."""
    code = f"U+{ord(character):04X}"
    return code if not character.isprintable() else f"{character!r} ({code})"
