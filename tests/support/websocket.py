"""The tests' and benchmarks' WebSocket client: aiohttp's, as an RFB transport.

Reaches a real server (Daphne, websockify, nginx) the way a browser does:
its cookies and Origin, the `binary` subprotocol offered on a display, no
compression, messages of any size, and the server's close code and reason
kept. A client that stops reading is a real stuck browser: aiohttp stops
reading the socket once its small buffer is full, so the server's sends back
up in TCP.

Must not: grow into a general client. Anything a browser would do beyond
handshake, messages and close belongs to Playwright tests.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp


class WebSocketRefusedError(ConnectionError):
    """The server answered the opening handshake with something other than 101."""

    def __init__(self, status_line: str) -> None:
        super().__init__(f"WebSocket handshake refused: {status_line}")
        self.status_line = status_line


class WebSocketTransport:
    """Binary (and text) WebSocket messages to and from a server at ws://host:port/path."""

    def __init__(self, session: aiohttp.ClientSession, connection: aiohttp.ClientWebSocketResponse) -> None:
        self._session, self._socket = session, connection
        self.close_code: int | None = None
        self.close_reason = ""
        self.subprotocol: str | None = connection.protocol
        # Sends queued by send_nowait, kept so that none is collected half-done.
        self._sending: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, url: str, *, headers: dict[str, str] | None = None,
                   subprotocols: list[str] | None = None,
                   local_address: str | None = None) -> WebSocketTransport:
        """local_address: the loopback address to connect from (127.0.0.2, …), so a
        proxy in front of the server sees a client of its own."""
        connector = aiohttp.TCPConnector(local_addr=(local_address, 0) if local_address else None,
                                         force_close=True)
        # The cookie jar stays out of it: the Cookie header is the visitor's, as given.
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        try:
            connection = await session.ws_connect(
                url, headers=headers or {}, protocols=subprotocols or (), compress=0,
                max_msg_size=0, autoping=True, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except aiohttp.WSServerHandshakeError as error:
            await session.close()
            raise WebSocketRefusedError(f"HTTP/1.1 {error.status} {error.message}") from error
        except aiohttp.ClientError as error:
            await session.close()
            raise ConnectionError(f"no WebSocket to {url}: {error!r}") from error
        except BaseException:
            await session.close()
            raise
        return cls(session, connection)

    async def send(self, data: bytes) -> None:
        await self._socket.send_bytes(data)

    def send_nowait(self, data: bytes) -> None:
        """Queue a binary message without waiting for the server to read it (a client
        that keeps asking while it reads nothing)."""
        task = asyncio.ensure_future(self._send_quietly(data))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            await self._socket.send_bytes(data)

    async def send_text(self, text: str) -> None:
        await self._socket.send_str(text)

    async def closed(self) -> int | None:
        """Read (and drop) messages until the server closes; returns its close code."""
        with contextlib.suppress(ConnectionError):
            while True:
                await self._receive(None)
        return self.close_code

    async def receive(self) -> bytes:
        """The next binary message; raises ConnectionError when the server closes."""
        data = await self._receive(aiohttp.WSMsgType.BINARY)
        assert isinstance(data, bytes)
        return data

    async def receive_text(self) -> str:
        """The next text message (the events socket's JSON); binary ones are refused."""
        data = await self._receive(aiohttp.WSMsgType.TEXT)
        assert isinstance(data, str)
        return data

    async def _receive(self, expected: aiohttp.WSMsgType | None) -> bytes | str:
        message = await self._socket.receive()
        if message.type in {aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT}:
            if expected is not None and message.type != expected:
                raise ConnectionError(f"expected {expected.name.lower()} messages, "
                                      f"got {message.type.name.lower()}")
            return message.data  # type: ignore[no-any-return]
        if message.type == aiohttp.WSMsgType.CLOSE:
            self.close_code, self.close_reason = int(message.data), str(message.extra or "")
        elif self.close_code is None and self._socket.close_code is not None:
            self.close_code = self._socket.close_code
        await self.abort()
        raise ConnectionError(f"WebSocket closed with code {self.close_code}")

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError, asyncio.TimeoutError):
            await self._socket.close(code=1000)
        await self.abort()

    async def abort(self) -> None:
        """Hang up without a close frame, as a browser whose tab died."""
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)
        connection = self._socket.get_extra_info("socket")
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        await self._session.close()
