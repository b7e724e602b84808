"""Waiting for a condition that has nothing to await (files, database rows)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], *, timeout_s: float,
                     interval_s: float = 0.05) -> None:
    """Return once check() is true; TimeoutError after timeout_s."""
    async with asyncio.timeout(timeout_s):
        for _ in iter(int, 1):
            if await check():
                return
            await asyncio.sleep(interval_s)


def wait_until(condition: Callable[[], object], *, timeout_s: float, what: str) -> None:
    """Poll a condition on processes, files or another process's answers (nothing
    here can be awaited); AssertionError naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
