"""Write a NASM table of the characters a keyboard layout types, from QEMU's keymap.

The German test guest (tests/guests/keyboard.asm) stands in for DOS's KEYB GR:
it reads the PC's scancodes and turns them into characters with this table.
It is made from the same description of the layout as the portal's (QEMU's
keymaps in Debian's qemu-system-data, and X11's keysymdef.h for the keysym
names), but by this script's own reading, so the portal's code is not
checking itself.

Output: three 128-byte tables, `keymap_plain`, `keymap_shifted` and `keymap_altgr`, indexed by
scancode, of code page 437 bytes (0 where the key types nothing at that level).

Run: `python tests/guests/keymap_table.py de > keymap_de.inc`.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

KEYMAPS = Path("/usr/share/qemu/keymaps")
KEYSYMDEF = Path("/usr/include/X11/keysymdef.h")
# cp437's glyphs below 0x20 that a German KEYB types (Python's codec reads them as controls).
GLYPHS = {"\u00a7": 0x15, "\u00b6": 0x14}


def keysym_names() -> dict[str, str]:
    """Each X11 keysym name with the character its comment names (U+XXXX)."""
    names = {}
    for line in KEYSYMDEF.read_text(encoding="latin-1").splitlines():
        match = re.match(r"#define XK_(\w+)\s+0x([0-9a-f]+)\s*/\*\s*U\+([0-9A-F]{4,6})", line)
        if match:
            names[match.group(1)] = chr(int(match.group(3), 16))
    return names


def cp437(character: str) -> int | None:
    if character in GLYPHS:
        return GLYPHS[character]
    try:
        byte = character.encode("cp437")
    except UnicodeEncodeError:
        return None
    return byte[0] if byte[0] >= 0x20 else None


def tables(layout: str) -> dict[str, list[int]]:
    names = keysym_names()
    levels = {"plain": [0] * 128, "shifted": [0] * 128, "altgr": [0] * 128}
    for line in (KEYMAPS / layout).read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2 or not words[1].startswith("0x"):
            continue
        name, scancode, flags = words[0], int(words[1], 16), set(words[2:])
        level = {frozenset(): "plain", frozenset({"shift"}): "shifted",
                 frozenset({"altgr"}): "altgr"}.get(frozenset(flags))
        character = names.get(name)
        if level is None or scancode >= 0x80 or character is None:
            continue
        byte = cp437(character)
        if byte is not None and not levels[level][scancode]:
            levels[level][scancode] = byte
    return levels


def main() -> None:
    for level, table in tables(sys.argv[1]).items():
        print(f"keymap_{level}:")
        for start in range(0, 128, 16):
            print("    db " + ", ".join(f"0x{byte:02x}" for byte in table[start:start + 16]))


if __name__ == "__main__":
    main()
