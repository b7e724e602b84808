"""What a DOS guest shows, read from outside: the text screen and files on its disk.

Used as the test oracle beside the RFB framebuffer: the VGA text buffer says
which prompt the visitor is looking at, and mtools reads a raw copy of an
overlay to prove what the guest wrote where.
"""
from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from portal.importer import sha256_path as sha256_file
from sessions.machines.machine import Machine
from tests.support.rfb import RfbClient


async def wait_for_screen(
    machine: Machine, rfb: RfbClient, condition: Callable[[str], bool], *,
    timeout_s: float, what: str,
) -> str:
    """Wait until the guest's text screen satisfies condition; returns the screen.

    The text is looked at again whenever the visitor's view (the RFB client's
    framebuffer) receives an update, so nothing here waits blindly.
    """
    screen = ""

    async def shows() -> bool:
        nonlocal screen
        screen = await machine.text_screen()
        return condition(screen)

    try:
        await rfb.until(shows, timeout_s=timeout_s)
    except TimeoutError:
        raise AssertionError(f"{what} never appeared; the screen shows:\n{screen}") from None
    return screen


async def wait_for_text(machine: Machine, rfb: RfbClient, needle: str, *, timeout_s: float) -> str:
    """Wait until the guest's text screen shows needle; returns the screen."""
    return await wait_for_screen(machine, rfb, lambda screen: needle in screen,
                                 timeout_s=timeout_s, what=repr(needle))


async def disk_file(machine: Machine, overlay: Path, name: str) -> bytes | None:
    """Read a file from the FAT disk a running machine uses, or None if absent.

    The VM is paused while its overlay is copied, so QEMU has flushed every
    write; it runs on afterwards.
    """
    await machine.execute("stop")
    try:
        with tempfile.TemporaryDirectory() as scratch:
            raw = Path(scratch) / "disk.raw"
            await asyncio.to_thread(
                subprocess.run,
                ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(overlay), str(raw)],
                check=True, capture_output=True,
            )
            result = await asyncio.to_thread(
                subprocess.run, ["mtype", "-i", str(raw), f"::{name}"], capture_output=True
            )
    finally:
        await machine.execute("cont")
    return result.stdout if result.returncode == 0 else None


__all__ = ["disk_file", "sha256_file", "wait_for_screen", "wait_for_text"]
