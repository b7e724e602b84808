"""Thumbnails of exhibits, taken from a curator's running preview.

Owns: waiting until a preview's machine runs and its screen has settled,
asking QEMU for a PNG screendump (into a file the portal opens in the
session's run directory and hands to QEMU), and
handing it to the catalogue's thumbnail store (portal.thumbnails).

Must not: keep a machine alive or end one; it only reads the screen while the
broker says the machine runs, and gives up quietly when it stops.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from portal.models import Exhibit
from portal.thumbnails import png_has_content, thumbnail_set
from sessions.machines.machine import Machine, MachineError
from sessions.machines.prepare import screen_settle

if TYPE_CHECKING:
    from sessions.node.broker import Broker

logger = logging.getLogger(__name__)

SCREENDUMP_FILE = "thumbnail.png"
# The settling screen's dumps (PPM, compared by sessions.machines.prepare.screen_settle).
SCRATCH_FILE = "thumbnail.ppm"
POLL_S = 1.0
# The screen is taken once it has been still this long (as a start state is)...
STILL_S = 2.0
# ...or, for a screen that never settles, after this long.
SETTLE_TIMEOUT_S = 20.0

def thumbnail_take_soon(broker: Broker, *, session_id: str, exhibit: Exhibit) -> None:
    """Take the exhibit's thumbnail from this session in the background (the broker
    keeps the task, and cancels it when it stops)."""
    broker.task_start(thumbnail_take(broker, session_id=session_id, exhibit=exhibit),
                      name=f"thumbnail-{session_id}")


async def thumbnail_take(broker: Broker, *, session_id: str, exhibit: Exhibit) -> str | None:
    """Wait for the running machine and a settled, non-blank screen; store and record it."""
    try:
        png = await _settled_screen(broker, session_id=session_id)
    except (MachineError, OSError) as error:
        logger.warning("thumbnail of %s from session %s failed: %s", exhibit.slug, session_id, error)
        return None
    if png is None:
        return None
    # The curator chose this moment: a new start state keeps it.
    return await asyncio.to_thread(thumbnail_set, exhibit.pk, png, chosen=True)


async def _settled_screen(broker: Broker, *, session_id: str) -> bytes | None:
    """A PNG of the machine's screen once it has settled with something drawn on it (or,
    if it never settles in time, as it is then); None if it ends first or stays blank."""
    deadline = broker.config.machines.start_timeout_s + broker.config.machines.qemu_img_timeout_s
    async with asyncio.timeout(deadline):
        while (machine := broker.machine(session_id)) is None:
            if broker.keeper.generation(session_id) is None:
                return None  # ended before it ran
            await asyncio.sleep(POLL_S / 4)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                while (machine := broker.machine(session_id)) is not None:
                    await screen_settle(machine, machine.run_dir / SCRATCH_FILE, still_s=STILL_S)
                    screen = await _png(machine)
                    if png_has_content(screen):
                        return screen  # settled, and not the blank screen before the guest draws
        # It never settled: what it shows now, if anything.
        machine = broker.machine(session_id)
        if machine is None:
            return None
        screen = await _png(machine)
        return screen if png_has_content(screen) else None
    finally:
        if (machine := broker.machine(session_id)) is not None:
            with contextlib.suppress(OSError):
                (machine.run_dir / SCRATCH_FILE).unlink()


async def _png(machine: Machine) -> bytes:
    target = machine.run_dir / SCREENDUMP_FILE
    await machine.screendump(target, image_format="png")
    try:
        return await asyncio.to_thread(target.read_bytes)
    finally:
        with contextlib.suppress(OSError):
            target.unlink()
