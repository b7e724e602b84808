"""The test disk set: two 1.44 MB floppies with volume labels of their own and a file
each (built with mtools, as visitors' floppies are), and a small ISO 9660 CD, all
imported as masters through the curators' checked path and put into an exhibit's
disk set."""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from asgiref.sync import sync_to_async

from portal.images import disk_image_import
from portal.models import Exhibit, ExhibitDisk
from tests.support.hosted_guest import MTOOLS


def floppy_make(path: Path, *, label: str, files: dict[str, bytes], serial: str) -> Path:
    """A 1.44 MB FAT12 floppy at path with the volume label and files given."""
    path.unlink(missing_ok=True)
    subprocess.run(["mformat", "-i", os.fspath(path), "-C", "-f", "1440", "-v", label, "-N", serial, "::"],
                   env=MTOOLS, check=True, capture_output=True)
    for name, content in files.items():
        source = path.with_name(f"{path.stem}-{name}")
        source.write_bytes(content)
        subprocess.run(["mcopy", "-i", os.fspath(path), os.fspath(source), f"::{name}"],
                       env=MTOOLS, check=True, capture_output=True)
        source.unlink()
    return path


def cd_make(path: Path) -> Path:
    """A minimal ISO 9660 image: a primary volume descriptor and the set's terminator."""
    data = bytearray(64 * 2048)
    data[0x8000:0x8007] = b"\x01CD001\x01"
    data[0x8028:0x8028 + 9] = b"TESTCD   "
    data[0x8800:0x8807] = b"\xffCD001\x01"
    path.write_bytes(bytes(data))
    return path


async def disk_set_add(exhibit: Exhibit, directory: Path) -> dict[str, ExhibitDisk]:
    """Disk 1 (in B: at start), Disk 2, a write-protected disk and a CD, in that order."""
    specs: list[tuple[str, str, str, bool, bool, Callable[[Path], Path]]] = [
        ("one", "Disk 1 — Setup", "b", True, False,
         lambda p: floppy_make(p, label="DISK1", files={"ONE.TXT": b"first disk\r\n"}, serial="11111111")),
        ("two", "Disk 2 — Data", "b", False, False,
         lambda p: floppy_make(p, label="DISK2", files={"TWO.TXT": b"second disk\r\n"}, serial="22222222")),
        ("locked", "Disk 3 — Protected", "b", False, True,
         lambda p: floppy_make(p, label="DISK3", files={"THREE.TXT": b"third\r\n"}, serial="33333333")),
        ("cd", "CD-ROM", "cd", False, False, cd_make),
    ]
    disks = {}
    for position, (key, label, drive, at_start, protected, make) in enumerate(specs):
        source = make(directory / f"{key}.{'iso' if drive == 'cd' else 'img'}")
        image = await sync_to_async(disk_image_import)(source, name=source.name, agent="tests")
        disks[key] = await ExhibitDisk.objects.acreate(
            exhibit=exhibit, image=image, position=position, label=label, drive=drive,
            in_drive_at_start=at_start, write_protected=protected)
    return disks
