"""Session ids as they appear in URLs: anything else is treated as unknown."""
from __future__ import annotations

import re

SESSION_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{32}$")


def session_id_valid(value: str) -> bool:
    return bool(SESSION_ID_PATTERN.fullmatch(value))
