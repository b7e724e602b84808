"""The speed guest (tests/guests/speed.asm): a boot floppy that measures its own loop rate.

Built with NASM into a 1.44 MB floppy image; it prints, for ever,
`RTC=<iterations per second> PIT=<iterations per second>` (against the wall
clock over 5 s, then against its own timer over 36 ticks). Used by the
calibration test and by bench/speed.py as the busy guest.
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

from tests.support.boot_floppy import GUESTS, boot_floppy_build

SOURCE = GUESTS / "speed.asm"
RESULT = re.compile(r"RTC=(\d+) PIT=(\d+)")
# Where the guest counts its timer's ticks (a dword), and how many a second.
TICKS_ADDRESS = 0x7DF0
TICKS_PER_S = 1193182 / 65536

# Iterations per second of the guest's loop on the real CPUs, from Intel's clock
# counts: 130 clocks an iteration on a 386, 64 on a 486, 31 on a Pentium.
TARGETS = {
    "386sx16": 16_000_000 / 130,
    "486dx33": 33_000_000 / 64,
    "486dx2-66": 66_000_000 / 64,
    "pentium60": 60_000_000 / 31,
}


def speed_guest_build(directory: Path) -> Path:
    """The speed guest as a raw floppy image in directory."""
    return boot_floppy_build(SOURCE, directory)


def results(screen: str) -> list[tuple[int, int]]:
    """The complete measurements on the screen, oldest first: (wall clock, own timer).
    The last line may still be being printed, so it never counts."""
    lines = [line.strip() for line in screen.splitlines() if line.strip()][:-1]
    return [(int(m[1]), int(m[2])) for line in lines if (m := RESULT.fullmatch(line))]


async def guest_seconds(machine: Any) -> float:
    """The guest's own time since it started its timer (its tick count), read over QMP."""
    output = await machine.execute("human-monitor-command",
                                   {"command-line": f"xp /1wx {TICKS_ADDRESS:#x}"})
    return int(re.findall(r"0x([0-9a-f]{8})\b", str(output))[-1], 16) / TICKS_PER_S


async def pace(machine: Any, *, window_s: float) -> float:
    """The guest's time over the wall clock's in a window: 1.0 runs in real time."""
    guest_before, wall_before = await guest_seconds(machine), time.monotonic()
    await asyncio.sleep(window_s)  # the window itself
    return (await guest_seconds(machine) - guest_before) / (time.monotonic() - wall_before)
