"""The guest's text screen: what the BIOS says about it, and its characters decoded.

Owns: reading the BIOS data area's video fields (the mode, the columns, the
rows, the active page and its offset, the cursor), bounding what they ask for
to the largest VGA text mode inside the text window of video memory, telling a
text mode from a graphics one (the BIOS's mode, checked against the size the
display shows), and decoding character cells in a DOS code page with the
glyphs the PC's font draws for 0x01-0x1F and 0x7F. Pure functions on bytes:
`Machine.screen_read` fetches the bytes over QEMU's monitor.

Must not: import Django, talk to QEMU, or trust a guest-written value to read
outside the text window: every field of the BIOS data area is the guest's own
to write, so a hostile or confused program could ask for any geometry.
"""
from __future__ import annotations

import codecs
import functools
import re
import struct
from dataclasses import dataclass, field

from portal.profile import CODE_PAGES

# The BIOS data area's video fields, read as one block from BDA_START.
BDA_START = 0x448
BDA_LENGTH = 64  # 0x448-0x487: eight 8-byte words of the monitor's `xp /8gx`
_MODE = 0x449  # byte: the video mode
_COLUMNS = 0x44A  # word: characters per row
_PAGE_OFFSET = 0x44E  # word: the active page's offset in the text window
_CURSORS = 0x450  # 8 words, one per page: low byte the column, high byte the row
_ACTIVE_PAGE = 0x462  # byte
_ROWS_LESS_ONE = 0x484  # byte (EGA and later): rows - 1
# Text windows: colour modes at B800:0000, the monochrome mode 7 at B000:0000, 32 KiB each.
COLOUR_TEXT = 0xB8000
MONO_TEXT = 0xB0000
TEXT_WINDOW = 0x8000
# The largest VGA text mode (VESA 0x10C, SVGA BIOSes' 132x60): nothing larger is
# read, whatever the BIOS data area says. 132 x 60 cells of two bytes fit the window.
MAX_COLUMNS = 132
MAX_ROWS = 60
# The BIOS's text modes: 40x25 (0, 1), 80x25 (2, 3) and monochrome 80x25 (7).
TEXT_MODES = frozenset({0, 1, 2, 3, 7})
# What QEMU's VGA BIOS (SeaVGABIOS) writes as the mode for a VESA mode.
VESA_MODE = 0xFF
# The standard graphics modes' sizes, for when the display's own size is unknown.
GRAPHICS_SIZES = {4: (320, 200), 5: (320, 200), 6: (640, 200), 0x0D: (320, 200),
                  0x0E: (640, 200), 0x0F: (640, 350), 0x10: (640, 350), 0x11: (640, 480),
                  0x12: (640, 480), 0x13: (320, 200)}
# A text cell's width in pixels as QEMU's VGA draws it (8 or 9 dots, doubled in 40-column modes).
_CELL_WIDTHS = (8, 9, 16, 18)
# What the PC's font draws for 0x00-0x1F and 0x7F, the same in every DOS code page.
CONTROL_GLYPHS = (" ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼")
DEL_GLYPH = "⌂"
DEFAULT_CODE_PAGE = 437
_HEX_WORD = re.compile(r"0x([0-9a-fA-F]{16})\b")


@functools.cache
def code_page_table(code_page: int) -> str:
    """The 256 characters a code page's bytes draw on a PC's text screen."""
    if code_page not in CODE_PAGES:
        raise ValueError(f"unknown code page {code_page}")
    upper = codecs.decode(bytes(range(0x80, 0x100)), f"cp{code_page}", errors="replace")
    printable = "".join(chr(c) for c in range(0x20, 0x7F))
    return CONTROL_GLYPHS + printable + DEL_GLYPH + upper


@functools.cache
def _translation(code_page: int) -> dict[int, str]:
    """str.translate's table from a byte (as Latin-1 decodes it) to what the PC draws."""
    return dict(enumerate(code_page_table(code_page)))


def cells_decode(cells: bytes, *, columns: int, rows: int, code_page: int) -> list[str]:
    """Character cells (character, attribute) as lines, trailing spaces removed.
    A short read leaves the missing cells blank."""
    # Latin-1 turns each byte into the code point of its value, which the table maps.
    characters = cells[0::2].decode("latin-1").translate(_translation(code_page))
    return [characters[row * columns:(row + 1) * columns].rstrip(" \u00a0") for row in range(rows)]


def monitor_bytes(output: str) -> bytes:
    """The bytes of the monitor's `xp /Ngx` answer (8-byte words, little-endian)."""
    words = _HEX_WORD.findall(output)
    return struct.pack(f"<{len(words)}Q", *(int(word, 16) for word in words))


@dataclass(frozen=True)
class BiosVideo:
    """The BIOS data area's video fields, bounded: what a read of the text may use."""

    mode: int
    columns: int
    rows: int
    page: int
    address: int  # where the active page's cells start in guest memory
    cursor: tuple[int, int]  # (column, row), inside the screen

    @property
    def length(self) -> int:
        """Bytes of the active page's cells."""
        return self.columns * self.rows * 2

    @property
    def text(self) -> bool:
        return self.mode in TEXT_MODES


def bios_video(area: bytes) -> BiosVideo:
    """Read the video fields from the BIOS data area (bytes from BDA_START).

    Values out of range are taken as the BIOS's defaults rather than trusted: no
    columns or more than MAX_COLUMNS read as 80, rows (0 before an EGA BIOS set
    them, or more than MAX_ROWS) as 25, a page offset that would leave the text
    window as 0, a page beyond 7 as 0, and the cursor is held inside the screen.
    """
    area = area[:BDA_LENGTH].ljust(BDA_LENGTH, b"\0")

    def byte(address: int) -> int:
        return area[address - BDA_START]

    def word(address: int) -> int:
        return int.from_bytes(area[address - BDA_START:address - BDA_START + 2], "little")

    # Bit 7 is the "keep video memory" flag of a mode set, which some BIOSes leave
    # here; QEMU's VGA BIOS writes 0xFF for any VESA mode (graphics, on QEMU's VGAs).
    mode = byte(_MODE) if byte(_MODE) == VESA_MODE else byte(_MODE) & 0x7F
    columns = word(_COLUMNS)
    if not 1 <= columns <= MAX_COLUMNS:
        columns = 80
    rows = byte(_ROWS_LESS_ONE) + 1
    if rows == 1 or rows > MAX_ROWS:
        rows = 25
    page = byte(_ACTIVE_PAGE)
    if page > 7:
        page = 0
    offset = word(_PAGE_OFFSET) & ~1
    if offset + columns * rows * 2 > TEXT_WINDOW:
        offset = 0
    position = word(_CURSORS + 2 * page)
    cursor = (min(position & 0xFF, columns - 1), min(position >> 8, rows - 1))
    base = MONO_TEXT if mode == 7 else COLOUR_TEXT
    return BiosVideo(mode=mode, columns=columns, rows=rows, page=page, address=base + offset,
                     cursor=cursor)


def text_fits(width: int, height: int, *, columns: int, rows: int) -> bool:
    """Whether a display of width x height pixels shows a text mode of columns x rows."""
    if width not in {columns * cell for cell in _CELL_WIDTHS} or height % rows:
        return False
    return 8 <= height // rows <= 32


@dataclass(frozen=True)
class Screen:
    """What the guest's screen shows: its text, or that it is graphical."""

    text: bool
    mode: int
    width: int  # pixels; 0 where unknown
    height: int
    columns: int = 0
    rows: int = 0
    cursor: tuple[int, int] | None = None
    lines: tuple[str, ...] = field(default=())

    def plain(self) -> str:
        """The text as a file: one line per row, each ended by a newline."""
        return "".join(f"{line}\n" for line in self.lines)


def screen_from(video: BiosVideo, cells: bytes, *, code_page: int,
                display: tuple[int, int] | None) -> Screen:
    """The screen from the BIOS's fields, the active page's cells and the display's
    size (width, height; None where unknown).

    A text mode whose display does not show that many characters (a program that
    set a graphics mode through the VGA's registers, past the BIOS) is graphics;
    a mode the BIOS does not know as text, nor as graphics, whose display fits the
    BIOS's columns and rows exactly (an SVGA BIOS's text mode such as 132x43) is
    text. A VESA mode set through QEMU's VGA BIOS is graphics: it also writes
    columns and rows for it (80x30 at 640x480), so its size alone would fit.
    """
    width, height = display or (0, 0)
    if display is None:
        text = video.text
    else:
        svga_text = video.mode not in GRAPHICS_SIZES and video.mode != VESA_MODE and (
            video.columns > 80 or video.rows > 25)
        text = text_fits(width, height, columns=video.columns, rows=video.rows) and (
            video.text or svga_text)
    if not text:
        if display is None:
            width, height = GRAPHICS_SIZES.get(video.mode, (0, 0))
        return Screen(text=False, mode=video.mode, width=width, height=height)
    lines = cells_decode(cells, columns=video.columns, rows=video.rows, code_page=code_page)
    return Screen(text=True, mode=video.mode, width=width, height=height, columns=video.columns,
                  rows=video.rows, cursor=video.cursor, lines=tuple(lines))
