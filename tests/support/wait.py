"""Waiting for a condition that has nothing to await (files, database rows)."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float,
                     interval_s: float = 0.05) -> None:
    """Return once check() is true; TimeoutError after timeout_s."""
    async with asyncio.timeout(timeout_s):
        for _ in iter(int, 1):
            if await check():
                return
            await asyncio.sleep(interval_s)
