"""The keyboard guest (tests/guests/keyboard.asm): a boot floppy that reads
scancodes with a layout's table and says whether the line typed was the one
expected (the screen turns green, or red)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.boot_floppy import FLOPPY_BYTES, GUESTS

SOURCE = GUESTS / "keyboard.asm"
# The line the guest expects (EXPECTED in its source), and the screen's colours
# (VGA text mode's background palette) for its verdicts.
EXPECTED = "Grüße, Straße! y/z @{}<>|§µ"
GREEN, RED, GREY = (0, 168, 0), (168, 0, 0), (168, 168, 168)


def keyboard_guest_build(directory: Path, *, layout: str = "de") -> Path:
    """The guest with the layout's table (QEMU's keymap name), as a raw floppy in directory."""
    table = directory / "keymap.inc"
    table.write_text(subprocess.run([sys.executable, str(GUESTS / "keymap_table.py"), layout],
                                    check=True, capture_output=True, text=True).stdout)
    boot = directory / "keyboard.bin"
    subprocess.run(["nasm", "-f", "bin", "-I", f"{directory}/", "-o", str(boot), str(SOURCE)], check=True)
    image = directory / f"keyboard-{layout}.img"
    image.write_bytes(boot.read_bytes().ljust(FLOPPY_BYTES, b"\0"))
    boot.unlink()
    table.unlink()
    return image
