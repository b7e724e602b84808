"""A stand-in RFB server that answers every update request at once.

QEMU's VNC server sends updates on its own refresh timer (30 ms at best, up
to seconds on a still screen), so a round trip through QEMU measures QEMU's
timer, not the proxy in front of it. This server takes QEMU's place on a
session's VNC socket for the proxy measurements: RFB 3.8, no security,
640x480 at 32 bits a pixel, and every FramebufferUpdateRequest answered with
Raw pixels for exactly the region asked for, from bytes made once.

Run as `python -m bench.rfb_standin <socket path>`; it serves until SIGTERM.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys

WIDTH, HEIGHT = 640, 480
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
FRAME = bytes(range(256)) * (WIDTH * HEIGHT * 4 // 256)


def update_for(x: int, y: int, width: int, height: int) -> bytes:
    width, height = min(width, WIDTH - x), min(height, HEIGHT - y)
    header = struct.pack(">BxH", 0, 1) + struct.pack(">HHHHi", x, y, width, height, 0)
    return header + FRAME[: width * height * 4]


async def serve_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    cache: dict[tuple[int, int, int, int], bytes] = {}
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        writer.write(b"RFB 003.008\n")
        await reader.readexactly(12)
        writer.write(b"\x01\x01")  # one security type: None
        await reader.readexactly(1)
        writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)  # shared flag
        name = b"stand-in"
        writer.write(struct.pack(">HH", WIDTH, HEIGHT) + PIXEL_FORMAT + struct.pack(">I", len(name))
                     + name)
        while True:
            (kind,) = await reader.readexactly(1)
            if kind == 0:
                await reader.readexactly(19)
            elif kind == 2:
                (count,) = struct.unpack(">xH", await reader.readexactly(3))
                await reader.readexactly(4 * count)
            elif kind == 3:
                _, x, y, width, height = struct.unpack(">BHHHH", await reader.readexactly(9))
                key = (x, y, width, height)
                if key not in cache:
                    cache[key] = update_for(*key)
                writer.write(cache[key])
                await writer.drain()
            elif kind == 4:
                await reader.readexactly(7)
            elif kind == 5:
                await reader.readexactly(5)
            elif kind == 6:
                (length,) = struct.unpack(">3xI", await reader.readexactly(7))
                await reader.readexactly(length)
            else:
                break
    writer.close()


def _stop(path: str) -> None:
    # Clients may still be connected: nothing of theirs needs an orderly end.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os._exit(0)


async def main(path: str) -> None:
    server = await asyncio.start_unix_server(serve_client, path=path)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _stop, path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
