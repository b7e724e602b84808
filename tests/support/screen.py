"""Reading text off a graphical guest's framebuffer, as a visitor reads it.

The demo draws text on byte-aligned 8x16 cells with the VGA BIOS font, so a
cell's ink pattern is exactly one glyph of that font. The font is taken from
the guest's own memory, and text is recognised in the RFB framebuffer the
visitor's browser would show.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from sessions.machines.machine import Machine
from tests.support.rfb import RfbClient

# Where the demo keeps its RAM copy of the font: see demo/vars.asm
# (doc_buf at 0x1000, 4096 bytes; np_shadow 11x50; np_row 50; then font_ram).
DEMO_FONT_ADDRESS = 0x1000 + 4096 + 11 * 50 + 50
GLYPH_BYTES = 16
FULL_BLOCK = 0xDB

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
WHITE: Color = (255, 255, 255)


@dataclass(frozen=True)
class Font:
    glyphs: dict[bytes, str]

    @classmethod
    async def from_guest(cls, machine: Machine, address: int = DEMO_FONT_ADDRESS) -> Font:
        output = await machine.execute(
            "human-monitor-command", {"command-line": f"xp /{256 * GLYPH_BYTES}bx {address:#x}"}
        )
        data = bytes(int(value, 16) for value in re.findall(r"0x([0-9a-f]{2})\b", output))
        if len(data) != 256 * GLYPH_BYTES:
            raise AssertionError(f"read {len(data)} font bytes")
        block = data[FULL_BLOCK * GLYPH_BYTES:(FULL_BLOCK + 1) * GLYPH_BYTES]
        if block != b"\xff" * GLYPH_BYTES:
            raise AssertionError("no VGA font at the demo's font address")
        glyphs: dict[bytes, str] = {}
        for code in range(0x20, 0x7F):
            glyphs.setdefault(data[code * GLYPH_BYTES:(code + 1) * GLYPH_BYTES], chr(code))
        return cls(glyphs)


def ink_rows(rfb: RfbClient, ink: Color, *, top: int, bottom: int) -> list[bytes]:
    """Per pixel row, one byte per 8-pixel column: which pixels have the ink colour."""
    target = bytes((ink[2], ink[1], ink[0]))
    rows = []
    for y in range(top, min(bottom, rfb.height)):
        line = rfb.framebuffer[y * rfb.width * 4:(y + 1) * rfb.width * 4]
        bits = bytearray(rfb.width // 8)
        for x in range(rfb.width):
            if line[x * 4:x * 4 + 3] == target:
                bits[x >> 3] |= 0x80 >> (x & 7)
        rows.append(bytes(bits))
    return rows


def text_lines(rfb: RfbClient, font: Font, *, ink: Color, top: int = 0,
               bottom: int = 480) -> list[str]:
    """Every line of text in ink colour between top and bottom, at any pixel row."""
    rows = ink_rows(rfb, ink, top=top, bottom=bottom)
    lines = []
    for y in range(len(rows) - GLYPH_BYTES + 1):
        cells = []
        for column in range(len(rows[y])):
            glyph = bytes(rows[y + k][column] for k in range(GLYPH_BYTES))
            cells.append(font.glyphs.get(glyph, "\0"))
        # Cells that are not a glyph (graphics, or a window offset from this
        # row) split the row into separate runs of text.
        for run in "".join(cells).split("\0"):
            run = run.strip()
            if len(run.replace(" ", "")) >= 2:
                lines.append(re.sub(r" {2,}", "  ", run))
    return lines


def screen_shows(rfb: RfbClient, font: Font, needle: str, *, ink: Color, top: int = 0,
                 bottom: int = 480) -> bool:
    return any(needle in line for line in text_lines(rfb, font, ink=ink, top=top, bottom=bottom))
