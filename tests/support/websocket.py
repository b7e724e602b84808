"""A minimal RFC 6455 WebSocket client over TCP, as an RFB transport.

Used by tests and benchmarks to reach a real server (Daphne, websockify) the
way a browser does, without a dependency: binary messages only, client frames
masked, no extensions (so no permessage-deflate), and the close code kept.

Must not: grow into a general client. Anything a browser would do beyond
handshake, framing and close belongs to Playwright tests.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA


class WebSocketRefusedError(ConnectionError):
    """The server answered the opening handshake with something other than 101."""

    def __init__(self, status_line: str) -> None:
        super().__init__(f"WebSocket handshake refused: {status_line}")
        self.status_line = status_line


def _mask(payload: bytes, key: bytes) -> bytes:
    # XOR as one big integer: fast enough for the small messages an RFB client sends.
    if not payload:
        return payload
    repeated = (key * (len(payload) // 4 + 1))[: len(payload)]
    value = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return value.to_bytes(len(payload), "big")


class WebSocketTransport:
    """Binary WebSocket messages to and from a server at ws://host:port/path."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.close_code: int | None = None
        self.close_reason = ""
        self.subprotocol: str | None = None

    @classmethod
    async def open(cls, url: str, *, headers: dict[str, str] | None = None,
                   subprotocols: list[str] | None = None,
                   local_address: str | None = None) -> WebSocketTransport:
        """local_address: the loopback address to connect from (127.0.0.2, …), so a
        proxy in front of the server sees a client of its own."""
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        reader, writer = await asyncio.open_connection(
            host, port, limit=4 << 20, local_addr=(local_address, 0) if local_address else None)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {target} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
            "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
        ]
        if subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        response = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        transport = cls(reader, writer)
        if " 101 " not in response[0] + " ":
            await transport.abort()
            raise WebSocketRefusedError(response[0])
        accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()
        fields = {}
        for line in response[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("sec-websocket-accept") != accept:
            await transport.abort()
            raise WebSocketRefusedError("wrong Sec-WebSocket-Accept")
        transport.subprotocol = fields.get("sec-websocket-protocol")
        return transport

    async def send(self, data: bytes) -> None:
        self.writer.write(self._frame(OPCODE_BINARY, data))
        await self.writer.drain()

    def send_nowait(self, data: bytes) -> None:
        """Queue a binary message without waiting for the server to read it (a client
        that keeps asking while it reads nothing)."""
        self.writer.write(self._frame(OPCODE_BINARY, data))

    async def send_text(self, text: str) -> None:
        self.writer.write(self._frame(OPCODE_TEXT, text.encode()))
        await self.writer.drain()

    async def closed(self) -> int | None:
        """Read (and drop) messages until the server closes; returns its close code."""
        with contextlib.suppress(ConnectionError):
            while True:
                await self.receive()
        return self.close_code

    def _frame(self, opcode: int, payload: bytes) -> bytes:
        length = len(payload)
        if length < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | length)
        elif length < 1 << 16:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, length)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, length)
        key = os.urandom(4)
        return header + key + _mask(payload, key)

    async def receive(self) -> bytes:
        """The next binary message; raises ConnectionError when the server closes."""
        return await self._receive(OPCODE_BINARY)

    async def receive_text(self) -> str:
        """The next text message (the events socket's JSON); binary ones are refused."""
        return (await self._receive(OPCODE_TEXT)).decode()

    async def _receive(self, expected: int) -> bytes:
        parts: list[bytes] = []
        while True:
            first, second = await self._read_exact(2)
            opcode, final = first & 0x0F, bool(first & 0x80)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", await self._read_exact(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", await self._read_exact(8))
            if second & 0x80:
                raise ConnectionError("the server masked a frame")
            payload = await self._read_exact(length) if length else b""
            if opcode == OPCODE_CLOSE:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
                with contextlib.suppress(ConnectionError, OSError):
                    self.writer.write(self._frame(OPCODE_CLOSE, payload[:2]))
                    await self.writer.drain()
                await self.abort()
                raise ConnectionError(f"WebSocket closed with code {self.close_code}")
            if opcode == OPCODE_PING:
                self.writer.write(self._frame(OPCODE_PONG, payload))
                continue
            if opcode == OPCODE_PONG:
                continue
            if opcode in {OPCODE_TEXT, OPCODE_BINARY} and opcode != expected:
                kinds = {OPCODE_TEXT: "text", OPCODE_BINARY: "binary"}
                raise ConnectionError(f"expected {kinds[expected]} messages, got {kinds[opcode]}")
            parts.append(payload)
            if final:
                return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _read_exact(self, count: int) -> bytes:
        try:
            return await self.reader.readexactly(count)
        except asyncio.IncompleteReadError as error:
            raise ConnectionError("the connection ended mid-frame") from error

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self.writer.write(self._frame(OPCODE_CLOSE, struct.pack(">H", 1000)))
            await self.writer.drain()
        await self.abort()

    async def abort(self) -> None:
        """Hang up without a close frame, as a browser whose tab died."""
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
