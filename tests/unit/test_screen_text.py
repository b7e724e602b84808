"""The guest's text screen decoded from the BIOS data area and video memory, without
QEMU: code pages, the glyphs of the control characters, bounds, hostile BIOS values."""
from __future__ import annotations

import pytest

from portal.profile import CODE_PAGES
from sessions.machines.screen import (
    BDA_LENGTH,
    BDA_START,
    COLOUR_TEXT,
    MAX_COLUMNS,
    MAX_ROWS,
    MONO_TEXT,
    TEXT_WINDOW,
    bios_video,
    cells_decode,
    code_page_table,
    monitor_bytes,
    screen_from,
)


def area(*, mode: int = 3, columns: int = 80, rows_less_one: int = 24, page: int = 0,
         offset: int = 0, cursors: dict[int, tuple[int, int]] | None = None) -> bytes:
    """A BIOS data area's video fields, as a guest (or a hostile program) left them."""
    data = bytearray(BDA_LENGTH)

    def put(address: int, value: int, size: int) -> None:
        data[address - BDA_START:address - BDA_START + size] = value.to_bytes(size, "little")

    put(0x449, mode, 1)
    put(0x44A, columns, 2)
    put(0x44E, offset, 2)
    for number, (column, row) in (cursors or {}).items():
        put(0x450 + 2 * number, column | row << 8, 2)
    put(0x462, page, 1)
    put(0x484, rows_less_one, 1)
    return bytes(data)


def cells(text: str, *, code_page: int = 437, length: int = 80 * 25) -> bytes:
    encoded = text.encode(f"cp{code_page}").ljust(length, b" ")
    return bytes(byte for character in encoded for byte in (character, 0x07))


def test_an_80x25_colour_screen_reads_as_lines_with_the_cursor() -> None:
    video = bios_video(area(cursors={0: (4, 2)}))
    assert (video.mode, video.columns, video.rows, video.address) == (3, 80, 25, COLOUR_TEXT)
    assert video.cursor == (4, 2)
    screen = screen_from(video, cells("A:\\>dir".ljust(80) + "   trailing   "), code_page=437,
                         display=(720, 400))
    assert screen.text
    assert screen.lines[0] == "A:\\>dir"
    assert screen.lines[1] == "   trailing"
    assert len(screen.lines) == 25
    assert screen.plain().count("\n") == 25


def test_box_drawing_and_accents_in_code_page_437_and_850() -> None:
    raw = bytes([0xC9, 0xCD, 0xBB, 0x20, 0x82, 0xA5, 0xAB, 0xB0, 0xB1, 0xB2])
    row = bytes(byte for character in raw for byte in (character, 0x1F))
    assert cells_decode(row, columns=10, rows=1, code_page=437) == ["╔═╗ éÑ½░▒▓"]
    # 850 trades some box-drawing characters for accented capitals.
    assert cells_decode(bytes([0xB5, 7, 0xD1, 7]), columns=2, rows=1, code_page=850) == ["ÁÐ"]
    assert cells_decode(bytes([0xB5, 7, 0xD1, 7]), columns=2, rows=1, code_page=437) == ["╡╤"]
    assert cells_decode(bytes([0x80, 7, 0x9F, 7]), columns=2, rows=1, code_page=866) == ["АЯ"]


def test_control_characters_are_the_glyphs_the_pc_draws() -> None:
    table = code_page_table(437)
    assert table[0x00] == " "
    assert table[0x01:0x20] == "☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"
    assert table[0x7F] == "⌂"
    assert table[0x20:0x7F] == "".join(chr(code) for code in range(0x20, 0x7F))
    # Every code page offered draws 256 characters, none of them a control code.
    for code_page in CODE_PAGES:
        table = code_page_table(code_page)
        assert len(table) == 256
        assert not any(ord(character) < 0x20 or 0x7F <= ord(character) < 0xA0 for character in table)


def test_an_unknown_code_page_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown code page"):
        code_page_table(1252)


def test_hostile_bios_values_never_read_outside_the_text_window() -> None:
    hostile = [
        area(columns=0xFFFF, rows_less_one=0xFF, offset=0xFFFF, page=0xFF),
        area(columns=0, rows_less_one=0),
        area(columns=MAX_COLUMNS + 1, rows_less_one=MAX_ROWS),
        area(columns=MAX_COLUMNS, rows_less_one=MAX_ROWS - 1, offset=TEXT_WINDOW - 2),
        area(mode=7, offset=0x7FFF),
        area(mode=0xFF),
        b"",
        b"\xff" * BDA_LENGTH,
    ]
    for fields in hostile:
        video = bios_video(fields)
        base = MONO_TEXT if video.mode == 7 else COLOUR_TEXT
        assert 1 <= video.columns <= MAX_COLUMNS
        assert 1 <= video.rows <= MAX_ROWS
        assert base <= video.address
        assert video.address + video.length <= base + TEXT_WINDOW
        assert 0 <= video.cursor[0] < video.columns
        assert 0 <= video.cursor[1] < video.rows
    # Out of range: the BIOS's defaults, not the guest's word.
    assert (bios_video(hostile[0]).columns, bios_video(hostile[0]).rows) == (80, 25)
    assert bios_video(hostile[0]).page == 0


def test_the_largest_text_mode_and_the_active_page() -> None:
    video = bios_video(area(columns=132, rows_less_one=59, page=0))
    assert (video.columns, video.rows, video.length) == (132, 60, 132 * 60 * 2)
    paged = bios_video(area(page=2, offset=0x2000, cursors={0: (1, 1), 2: (10, 20)}))
    assert paged.address == COLOUR_TEXT + 0x2000
    assert paged.cursor == (10, 20)
    assert bios_video(area(mode=7)).address == MONO_TEXT
    # A cursor moved off the screen (to hide it) stays on its last row and column.
    assert bios_video(area(cursors={0: (200, 30)})).cursor == (79, 24)


def test_graphics_modes_by_the_bios_and_by_the_display() -> None:
    blank = cells("")
    # Mode 12h: the BIOS's word, with the display's size when known.
    graphics = screen_from(bios_video(area(mode=0x12)), blank, code_page=437, display=(640, 480))
    assert not graphics.text
    assert (graphics.width, graphics.height) == (640, 480)
    assert graphics.lines == ()
    guessed = screen_from(bios_video(area(mode=0x13)), blank, code_page=437, display=None)
    assert (guessed.text, guessed.width, guessed.height) == (False, 320, 200)
    # A program that set graphics through the VGA's registers: the BIOS says text,
    # the display does not show 80x25 characters.
    past_bios = screen_from(bios_video(area(mode=3)), blank, code_page=437, display=(640, 480))
    assert not past_bios.text
    # A VESA mode through QEMU's VGA BIOS: mode 0xFF, and the columns and rows of
    # its 8x16 font, which a 640x480 display would fit.
    vesa = screen_from(bios_video(area(mode=0xFF, rows_less_one=29)), cells("", length=80 * 30),
                       code_page=437, display=(640, 480))
    assert (vesa.text, vesa.width, vesa.height) == (False, 640, 480)
    # An SVGA text mode the BIOS knows by another number: the display fits 132x43.
    svga = screen_from(bios_video(area(mode=0x54, columns=132, rows_less_one=42)),
                       cells("", length=132 * 43), code_page=437, display=(1056, 344))
    assert svga.text
    assert (svga.columns, svga.rows) == (132, 43)
    # 80x50 (the 8x8 font) and 40x25 on QEMU's VGA.
    assert screen_from(bios_video(area(rows_less_one=49)), cells("", length=4000), code_page=437,
                       display=(720, 400)).text
    assert screen_from(bios_video(area(mode=1, columns=40)), cells("", length=1000), code_page=437,
                       display=(360, 400)).text


def test_the_monitors_answer_becomes_bytes() -> None:
    answer = ("00000000000b8000: 0x0720072007410741 0x0720072007200720\r\n"
              "00000000000b8010: 0x075c073a07410742\r\n")
    data = monitor_bytes(answer)
    assert len(data) == 24
    assert data[:4] == bytes([0x41, 0x07, 0x41, 0x07])
    # A short answer (the monitor said less) leaves the rest blank, never fails.
    assert cells_decode(data, columns=80, rows=2, code_page=437) == ["AA      BA:\\", ""]
