"""Who is asking: the anonymous visitor id kept in the browser's session cookie."""
from __future__ import annotations

import secrets
from typing import Any

VISITOR_KEY = "portal_visitor"


async def visitor_id(session: Any, *, create: bool) -> str | None:
    """The browser's visitor id; made and stored on first need when create is true."""
    value = await session.aget(VISITOR_KEY)
    if value is None and create:
        value = secrets.token_urlsafe(24)
        await session.aset(VISITOR_KEY, value)
    return value if isinstance(value, str) else None
