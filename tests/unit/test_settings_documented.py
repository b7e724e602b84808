"""Every setting the portal reads from its environment is in the operators' table,
and the table names no setting the code does not read."""
from __future__ import annotations

import re

from tests.conftest import REPO

# Names the code mentions that are not the operators' to set.
NOT_SETTINGS = {"DJANGO_SETTINGS_MODULE"}
NAME = re.compile(r"(?:PORTAL|DJANGO)_[A-Z0-9_]+")


def names_in_code() -> set[str]:
    names: set[str] = set()
    for package in ("portal", "sessions", "deploy"):
        for path in (REPO / package).rglob("*.py"):
            if "migrations" not in path.parts:
                names |= set(re.findall(rf'"({NAME.pattern})"', path.read_text()))
    return names - NOT_SETTINGS


def names_in_table() -> set[str]:
    text = (REPO / "docs" / "operators.md").read_text()
    table = text[text.index("\n## Settings\n"):]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return {name for row in rows for name in re.findall(rf"`({NAME.pattern})`", row.split(" | ")[0])}


def test_every_setting_the_code_reads_is_in_the_operators_table() -> None:
    missing = names_in_code() - names_in_table()
    assert not missing, f"add these to docs/operators.md, Settings: {sorted(missing)}"


def test_the_operators_table_names_only_settings_the_code_reads() -> None:
    stale = names_in_table() - names_in_code()
    assert not stale, f"docs/operators.md, Settings, names what the code no longer reads: {sorted(stale)}"
    assert len(names_in_table()) > 40
