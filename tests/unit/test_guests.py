"""The FreeDOS floppies the tests boot are the ones tests/guests/README.md names."""
from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.conftest import (
    FREEDOS_2048,
    FREEDOS_2048_SHA256,
    FREEDOS_GAMES,
    FREEDOS_GAMES_SHA256,
    FREEDOS_GAMES_SOURCE,
    REPO,
)
from tests.support.hosted_guest import MTOOLS


@pytest.mark.parametrize(("image", "sha256"), [(FREEDOS_2048, FREEDOS_2048_SHA256),
                                               (FREEDOS_GAMES_SOURCE, FREEDOS_GAMES_SHA256)])
def test_each_test_guest_is_the_floppy_its_readme_names(image: Path, sha256: str) -> None:
    assert hashlib.sha256(image.read_bytes()).hexdigest() == sha256
    assert image.stat().st_size == 737280, "a 720 KiB floppy"
    readme = (REPO / "tests" / "guests" / "README.md").read_text()
    assert f"`{image.name}` | `{sha256}`" in readme


def test_the_booted_games_floppy_is_its_source_halting_while_dos_waits() -> None:
    def read(image: Path, name: str) -> bytes:
        return subprocess.run(["mtype", "-i", str(image), f"::{name}"], env=MTOOLS, check=True,
                              capture_output=True).stdout

    assert read(FREEDOS_GAMES, "CONFIG.SYS") == b"IDLEHALT=1\r\n" + read(FREEDOS_GAMES_SOURCE, "CONFIG.SYS")
    assert read(FREEDOS_GAMES, "AUTOEXEC.BAT") == read(FREEDOS_GAMES_SOURCE, "AUTOEXEC.BAT")
    assert FREEDOS_GAMES.stat().st_size == FREEDOS_GAMES_SOURCE.stat().st_size
