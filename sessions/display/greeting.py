"""The portal's own connections to a machine's VNC server: the RFB greeting, and
the display's size it announces.

Owns: the RFB 3.8 handshake as a shared client without authentication (QEMU's
VNC server on the machine's socket, `share=force-shared`), for the portal's own
clients (the sound, `display.audio`; the display's size, `display_size`).

Must not: import Django or anything of the portal above it, or ask QEMU for
pictures: a connection that only greets costs QEMU one refresh of its display.
"""
from __future__ import annotations

import asyncio
import struct
from pathlib import Path

RFB_VERSION = b"RFB 003.008\n"
SECURITY_NONE = 1


class GreetingError(Exception):
    """The VNC server cannot be reached or did not greet as RFB 3.8 without a password."""


async def rfb_greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    error: type[Exception] = GreetingError) -> tuple[int, int]:
    """Shake hands as a shared client; returns the display's (width, height) from ServerInit."""
    version = await reader.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise error(f"not an RFB server: {version!r}")
    writer.write(RFB_VERSION)
    count = (await reader.readexactly(1))[0]
    if count == 0:
        length = int.from_bytes(await reader.readexactly(4), "big")
        reason = (await reader.readexactly(min(length, 1024))).decode("utf-8", "replace")
        raise error(f"the VNC server refused the connection: {reason}")
    if SECURITY_NONE not in await reader.readexactly(count):
        raise error("the VNC server asks for authentication")
    writer.write(bytes([SECURITY_NONE]))
    if int.from_bytes(await reader.readexactly(4), "big") != 0:
        raise error("the VNC server refused the connection")
    writer.write(b"\x01")  # ClientInit: shared, beside the visitor's displays
    width, height = struct.unpack(">HH", await reader.readexactly(4))
    await reader.readexactly(16)  # the pixel format
    name_length = int.from_bytes(await reader.readexactly(4), "big")
    await reader.readexactly(name_length)
    return width, height


async def display_size(vnc_path: Path, *, timeout_s: float) -> tuple[int, int]:
    """The size QEMU's display has now, in pixels: what a viewer connecting now is told."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(vnc_path))
            try:
                return await rfb_greet(reader, writer)
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
        raise GreetingError(f"the display's size could not be read: {error!r}") from error
