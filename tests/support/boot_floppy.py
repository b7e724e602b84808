"""Guests of the project's own: a NASM boot sector on a 1.44 MB floppy image."""
from __future__ import annotations

import subprocess
from pathlib import Path

GUESTS = Path(__file__).resolve().parent.parent / "guests"
FLOPPY_BYTES = 1474560


def boot_floppy_build(source: Path, directory: Path) -> Path:
    """The boot sector assembled from source (tests/guests/*.asm), as a raw floppy in directory."""
    boot = directory / f"{source.stem}.bin"
    subprocess.run(["nasm", "-f", "bin", "-o", str(boot), str(source)], check=True)
    image = directory / f"{source.stem}.img"
    image.write_bytes(boot.read_bytes().ljust(FLOPPY_BYTES, b"\0"))
    boot.unlink()
    return image
