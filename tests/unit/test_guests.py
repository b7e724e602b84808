"""The FreeDOS floppies the tests boot are the ones tests/guests/README.md names."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import FREEDOS_2048, FREEDOS_2048_SHA256, FREEDOS_GAMES, FREEDOS_GAMES_SHA256, REPO


@pytest.mark.parametrize(("image", "sha256"), [(FREEDOS_2048, FREEDOS_2048_SHA256),
                                               (FREEDOS_GAMES, FREEDOS_GAMES_SHA256)])
def test_each_test_guest_is_the_floppy_its_readme_names(image: Path, sha256: str) -> None:
    assert hashlib.sha256(image.read_bytes()).hexdigest() == sha256
    assert image.stat().st_size == 737280, "a 720 KiB floppy"
    readme = (REPO / "tests" / "guests" / "README.md").read_text()
    assert f"`{image.name}` | `{sha256}`" in readme
