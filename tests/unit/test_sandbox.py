"""The sandbox's pure parts: DOS names for visitors' files, FAT partitions of a disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from sessions.machines.sandbox import Checkpoint, dos_names, fat_partitions


def test_it_makes_dos_names_from_any_names() -> None:
    assert dos_names(["hello.txt", "Hello.TXT", "résumé final.doc", "con.txt", "archive.tar.gz",
                      "C:\\docs\\a b.c", ".profile", "noext", "../../etc/passwd", "日本.txt"]) == [
        "HELLO.TXT", "HELLO~1.TXT", "RESUMEFI.DOC", "CON~1.TXT", "ARCHIVET.GZ", "AB.C", "PROFILE",
        "NOEXT", "PASSWD", "FILE.TXT"]


def test_it_keeps_names_apart_past_nine_clashes() -> None:
    names = dos_names(["report.txt"] * 12)
    assert len(set(names)) == 12
    assert all(len(name.split(".")[0]) <= 8 for name in names)
    assert names[10] == "REPOR~10.TXT"


def sector(*, partitions: list[tuple[int, int]] = (), fat_header: bool = False) -> bytes:  # type: ignore[assignment]
    data = bytearray(512)
    if fat_header:
        data[0x36:0x3B] = b"FAT12"
    for number, (kind, start) in enumerate(partitions):
        entry = 0x1BE + 16 * number
        data[entry + 4] = kind
        data[entry + 8:entry + 12] = start.to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    return bytes(data)


@pytest.mark.parametrize(("first", "offsets"), [
    (sector(partitions=[(0x06, 2048)]), [2048 * 512]),
    (sector(partitions=[(0x0E, 63), (0x83, 4096), (0x0B, 8192)]), [63 * 512, 8192 * 512]),
    (sector(fat_header=True), [0]),
    (sector(partitions=[(0x83, 2048)]), []),
    (bytes(512), []),
])
def test_it_finds_the_fat_file_systems_of_a_hard_disk(tmp_path: Path, first: bytes,
                                                      offsets: list[int]) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(first + bytes(4096))
    assert fat_partitions(disk) == offsets


def test_it_shows_a_checkpoint_as_the_api_says() -> None:
    from datetime import UTC, datetime

    checkpoint = Checkpoint(id="abc", created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), label="x",
                            nodes=("n",), drives=(), seconds=0.01)
    assert checkpoint.as_json() == {"id": "abc", "created_at": "2026-01-02T03:04:05+00:00", "label": "x"}
    assert checkpoint.tag == "checkpoint-abc"
