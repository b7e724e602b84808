"""A small RFB 3.8 client for tests: the view a visitor's noVNC has of a machine.

It speaks over any byte transport (the portal's WebSocket through Channels'
WebsocketCommunicator, or a VNC unix socket directly), keeps a 32-bit
framebuffer up to date from raw-encoded updates, and sends keys and pointer
events the way a browser does.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

ENCODING_RAW = 0
ENCODING_DESKTOP_SIZE = -223

KEYSYM_RETURN = 0xFF0D
KEYSYM_ESCAPE = 0xFF1B
KEYSYM_BACKSPACE = 0xFF08
KEYSYM_SHIFT_L = 0xFFE1
# Characters that need Shift on a US keyboard, as a browser sends them.
_SHIFTED = set('~!@#$%^&*()_+{}|:"<>?') | {chr(c) for c in range(ord("A"), ord("Z") + 1)}


class Transport(Protocol):
    async def send(self, data: bytes) -> None: ...
    async def receive(self) -> bytes: ...
    async def close(self) -> None: ...


class CommunicatorTransport:
    """Binary WebSocket messages through Channels' WebsocketCommunicator.

    Every receive is bounded (timeout_s, a safety net: callers bound their own
    waits more tightly). The bound is kept here, around the communicator, not
    given to it: asgiref cancels the application when its own receive times out,
    and a guest whose screen is still may rightly send nothing for a while.
    """

    def __init__(self, communicator: object, timeout_s: float = 120) -> None:
        self.communicator = communicator
        self.timeout_s = timeout_s
        self.close_code: int | None = None

    async def send(self, data: bytes) -> None:
        await self.communicator.send_to(bytes_data=data)  # type: ignore[attr-defined]

    async def receive(self) -> bytes:
        try:
            async with asyncio.timeout(self.timeout_s):
                message = await self.communicator.receive_output(None)  # type: ignore[attr-defined]
        except TimeoutError:
            raise TimeoutError(f"the display sent nothing for {self.timeout_s:g} s") from None
        if message["type"] == "websocket.close":
            self.close_code = message.get("code")
            raise ConnectionError(f"WebSocket closed with code {self.close_code}")
        data = message.get("bytes")
        if data is None:
            raise AssertionError(f"expected a binary message, got {message!r}")
        return bytes(data)

    async def close(self) -> None:
        await self.communicator.disconnect()  # type: ignore[attr-defined]


class SocketTransport:
    """A VNC unix socket, read in chunks."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> SocketTransport:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def receive(self) -> bytes:
        data = await self.reader.read(1 << 20)
        if not data:
            raise ConnectionError("VNC socket closed")
        return data

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


class RfbClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self.width = 0
        self.height = 0
        self.name = ""
        self.framebuffer = bytearray()
        self.updates = 0
        self._updated = asyncio.Condition()
        self._loop_task: asyncio.Task[None] | None = None

    async def _read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            self._buffer += await self.transport.receive()
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def handshake(self) -> None:
        version = await self._read_exact(12)
        if not version.startswith(b"RFB 003."):
            raise AssertionError(f"not an RFB server: {version!r}")
        await self.transport.send(b"RFB 003.008\n")
        (count,) = struct.unpack("B", await self._read_exact(1))
        if count == 0:
            (length,) = struct.unpack(">I", await self._read_exact(4))
            raise AssertionError((await self._read_exact(length)).decode())
        types = await self._read_exact(count)
        if 1 not in types:
            raise AssertionError(f"server offers no 'None' security: {list(types)}")
        await self.transport.send(b"\x01")
        (result,) = struct.unpack(">I", await self._read_exact(4))
        if result != 0:
            raise AssertionError("security handshake failed")
        await self.transport.send(b"\x01")  # shared
        header = await self._read_exact(24)
        self.width, self.height = struct.unpack(">HH", header[:4])
        (name_length,) = struct.unpack(">I", header[20:24])
        self.name = (await self._read_exact(name_length)).decode("latin-1")
        self.framebuffer = bytearray(self.width * self.height * 4)
        # 32 bits per pixel, little-endian, true colour: red at bit 16 (BGRX in memory).
        pixel_format = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        await self.transport.send(b"\x00\x00\x00\x00" + pixel_format)
        encodings = [ENCODING_RAW, ENCODING_DESKTOP_SIZE]
        await self.transport.send(
            struct.pack(">BxH", 2, len(encodings)) + b"".join(struct.pack(">i", e) for e in encodings)
        )
        await self.request_update(incremental=False)

    async def request_update(self, *, incremental: bool) -> None:
        await self.transport.send(
            struct.pack(">BBHHHH", 3, int(incremental), 0, 0, self.width, self.height)
        )

    async def read_until_closed(self) -> None:
        """Read (and apply) messages until the server closes the stream: raises the
        transport's ConnectionError then."""
        while True:
            await self.read_message()

    async def read_message(self) -> None:
        (kind,) = struct.unpack("B", await self._read_exact(1))
        if kind == 0:
            await self._read_update()
        elif kind == 1:
            _, _, count = struct.unpack(">xHH", await self._read_exact(5))
            await self._read_exact(6 * count)
        elif kind == 2:
            pass
        elif kind == 3:
            (length,) = struct.unpack(">3xI", await self._read_exact(7))
            await self._read_exact(length)
        else:
            raise AssertionError(f"unknown RFB server message {kind}")

    async def _read_update(self) -> None:
        (count,) = struct.unpack(">xH", await self._read_exact(3))
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self._read_exact(12))
            if encoding == ENCODING_DESKTOP_SIZE:
                self.width, self.height = w, h
                self.framebuffer = bytearray(w * h * 4)
            elif encoding == ENCODING_RAW:
                data = await self._read_exact(w * h * 4)
                for row in range(h):
                    start = ((y + row) * self.width + x) * 4
                    self.framebuffer[start:start + w * 4] = data[row * w * 4:(row + 1) * w * 4]
            else:
                raise AssertionError(f"unexpected encoding {encoding}")
        async with self._updated:
            self.updates += 1
            self._updated.notify_all()

    async def first_update(self) -> None:
        """Read until the first framebuffer update has arrived (before start())."""
        assert self._loop_task is None, "the background reader owns the stream"
        while self.updates == 0:
            await self.read_message()

    def start(self) -> None:
        """Keep the framebuffer current in the background, as noVNC does."""
        self._loop_task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        # Ask for what changes next, as noVNC does after every update; otherwise a
        # screen that was complete at the first update would never be sent again.
        await self.request_update(incremental=True)
        while True:
            before = self.updates
            await self.read_message()
            if self.updates != before:
                await self.request_update(incremental=True)

    async def wait_for(self, predicate: object, timeout_s: float) -> None:
        """Wait until predicate(self) holds, re-checking at every screen update."""
        async with asyncio.timeout(timeout_s):
            async with self._updated:
                await self._updated.wait_for(lambda: predicate(self))  # type: ignore[operator]

    async def until(self, check: Callable[[], Awaitable[bool]], *, timeout_s: float) -> None:
        """Wait until an async check holds, looking again at every screen update."""
        async with asyncio.timeout(timeout_s):
            while True:
                # Counted before looking, so an update during the look is not missed.
                seen = self.updates
                if await check():
                    return
                await self.wait_for(lambda client, seen=seen: client.updates > seen,
                                    timeout_s=timeout_s)

    async def close(self) -> None:
        """Stop reading and close the connection."""
        await self.stop()
        await self.transport.close()

    async def wait_closed(self) -> None:
        """Wait until the server closes the stream; raises what ended the reader."""
        assert self._loop_task is not None, "start() first"
        await self._loop_task

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, TimeoutError):
                await task

    # --- input --------------------------------------------------------------

    async def key(self, keysym: int, *, down: bool) -> None:
        await self.transport.send(struct.pack(">BBxxI", 4, int(down), keysym))

    async def press(self, keysym: int) -> None:
        await self.key(keysym, down=True)
        await self.key(keysym, down=False)

    async def type_text(self, text: str) -> None:
        for char in text:
            if char == "\n":
                await self.press(KEYSYM_RETURN)
                continue
            shifted = char in _SHIFTED
            if shifted:
                await self.key(KEYSYM_SHIFT_L, down=True)
            await self.press(ord(char))
            if shifted:
                await self.key(KEYSYM_SHIFT_L, down=False)

    async def pointer(self, x: int, y: int, *, buttons: int = 0) -> None:
        await self.transport.send(struct.pack(">BBHH", 5, buttons, x, y))

    async def demand_unread(self, send_nowait: Callable[[bytes], None]) -> None:
        """A hostile client, until cancelled: raw full-screen updates and pointer moves
        asked for every 20 ms (as long as the server reads them), none of it read."""
        update = struct.pack(">BBHHHH", 3, 0, 0, 0, self.width, self.height)
        pointer = b"".join(struct.pack(">BBHH", 5, 0, x, 200) for x in range(0, self.width, 8))
        while True:
            send_nowait(update * 50 + pointer)
            await asyncio.sleep(0.02)

    # --- what the visitor sees ----------------------------------------------

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        offset = (y * self.width + x) * 4
        blue, green, red = self.framebuffer[offset:offset + 3]
        return red, green, blue

    def lit_pixels(self) -> int:
        """How many pixels are not black."""
        view = memoryview(self.framebuffer)
        return sum(1 for i in range(0, len(view), 4) if view[i] | view[i + 1] | view[i + 2])

    def snapshot(self) -> bytes:
        return bytes(self.framebuffer)
