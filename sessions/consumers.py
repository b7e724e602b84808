"""The display WebSocket: a byte pipe between the browser and the machine's VNC socket.

Owns: checking who may connect (origin, ownership), then copying bytes both
ways until either side ends, and closing with the API's close codes.

Must not: decide anything about a machine's life. It tells the broker that a
viewer came or went; the broker owns the end (Daphne cancels a consumer 10 s
after the browser leaves, so nothing here may be needed for cleanup).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings

from portal.visitor import visitor_id

from .broker import DisplayUnavailableError, SessionEndedError, get_broker
from .ids import session_id_valid
from .models import VisitorSession

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN = 4404
CLOSE_ENDED = 4410
CLOSE_UNREACHABLE = 1011
# The machine was replaced (reset): the client should connect again at once.
CLOSE_RESTARTED = 1012
CLOSE_UNSUPPORTED_DATA = 1003

# How much of the display's output may wait for the browser before the pipe
# stops reading the VNC socket (and so QEMU stops writing). Four full-screen
# 640x480x32 updates.
DISPLAY_BUFFER_BYTES = 4 * 1024 * 1024


class VncPipe(asyncio.Protocol):
    """The VNC socket's end of the pipe: what QEMU sends waits here for the browser.

    Reads are taken as asyncio hands them over (up to 256 KiB each) and kept
    as they are, never copied into one buffer; the socket is read as soon as it
    is readable, so QEMU never waits on the WebSocket side's turn. Past
    DISPLAY_BUFFER_BYTES the socket is no longer read until the browser side
    has caught up.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.ended = False
        self.error: Exception | None = None
        self._arrived = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > DISPLAY_BUFFER_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._arrived.set()

    def eof_received(self) -> bool:
        self.ended = True
        self._arrived.set()
        return False

    def connection_lost(self, error: Exception | None) -> None:
        self.ended, self.error = True, error
        self._arrived.set()
        self._writable.set()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def taken(self) -> list[bytes]:
        """Everything that has arrived since the last call; [] once the socket has ended."""
        while not self.chunks:
            if self.ended:
                return []
            self._arrived.clear()
            await self._arrived.wait()
        taken = list(self.chunks)
        self.chunks.clear()
        self.buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return taken

    async def write(self, data: bytes) -> None:
        """Send to QEMU; waits while QEMU is not reading (its pace is the back-pressure)."""
        if self.transport is None or self.ended:
            raise ConnectionError("the VNC socket is closed")
        self.transport.write(data)
        await self._writable.wait()
        if self.ended:
            raise ConnectionError("the VNC socket is closed")


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Browsers always send Origin: it must be this site or an allowed embedder.

    A client without Origin is not a browser, so it cannot be a cross-site
    request; it still needs the owner's session cookie.
    """
    origin = _header(scope, b"origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if origin in settings.PORTAL_ALLOWED_ORIGINS:
        return True
    host = _header(scope, b"host")
    parts = urlsplit(origin)
    return bool(host) and parts.scheme in {"http", "https"} and parts.netloc == host


class VncConsumer(AsyncWebsocketConsumer):
    """`/ws/sessions/<id>/vnc`: RFB bytes in binary messages."""

    session_id: str = ""
    generation: int | None = None
    _attached = False
    _reader_task: asyncio.Task[None] | None = None
    _pipe: VncPipe | None = None

    async def connect(self) -> None:
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        subprotocols = self.scope.get("subprotocols") or []
        # A close code only reaches the browser after the handshake, so accept first.
        await self.accept("binary" if "binary" in subprotocols else None)
        code = await self._authorize()
        if code is not None:
            await self.close(code)
            return
        broker = await get_broker()
        try:
            vnc_path = await broker.display_attach(session_id=self.session_id)
        except SessionEndedError:
            await self.close(CLOSE_ENDED)
            return
        except DisplayUnavailableError:
            await self.close(CLOSE_UNREACHABLE)
            return
        self._attached = True
        self.generation = broker.session_generation(self.session_id)
        try:
            _, self._pipe = await asyncio.get_running_loop().create_unix_connection(
                VncPipe, str(vnc_path)
            )
        except OSError as error:
            logger.warning("session %s: VNC socket unreachable: %s", self.session_id, error)
            await self._close_after_display_end()
            return
        self._reader_task = asyncio.create_task(self._pump_to_browser(self._pipe))

    async def _authorize(self) -> int | None:
        if not origin_allowed(self.scope):
            return CLOSE_FORBIDDEN
        if not session_id_valid(self.session_id):
            return CLOSE_UNKNOWN
        session = await VisitorSession.objects.filter(id=self.session_id).afirst()
        if session is None:
            return CLOSE_UNKNOWN
        owner = await visitor_id(self.scope["session"], create=False)
        if owner is None or owner != session.owner:
            return CLOSE_FORBIDDEN
        if not session.is_live:
            return CLOSE_ENDED
        return None

    async def _pump_to_browser(self, pipe: VncPipe) -> None:
        # One read from the socket becomes one WebSocket message, as it arrived.
        while chunks := await pipe.taken():
            for chunk in chunks:
                await self.send(bytes_data=chunk)
        if pipe.error is not None:
            logger.info("session %s: VNC read ended: %s", self.session_id, pipe.error)
        await self._close_after_display_end()

    async def _close_after_display_end(self) -> None:
        """The display went away: say whether the session ended or the display broke."""
        broker = await get_broker()
        current = broker.session_generation(self.session_id)
        if current is not None and current != self.generation:
            await self.close(CLOSE_RESTARTED)
            return
        ended = await broker.session_wait_ended(
            session_id=self.session_id, timeout_s=broker.config.stop_timeout_s
        )
        await self.close(CLOSE_ENDED if ended else CLOSE_UNREACHABLE)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections() in a worker thread before every
        # message; the pipe touches no database per message, and that thread hop
        # was most of the latency a keystroke or an update request spent here.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._pipe is None:
            return
        if bytes_data is None:
            # RFB is binary; a text message is a client speaking something else.
            await self.close(CLOSE_UNSUPPORTED_DATA)
            return
        try:
            await self._pipe.write(bytes_data)
        except (ConnectionError, OSError):
            await self._close_after_display_end()

    async def disconnect(self, code: int) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.transport is not None:
            pipe.transport.close()
        if self._attached:
            self._attached = False
            broker = await get_broker()
            broker.display_detach(session_id=self.session_id)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: accepted only to say 4404, never an error page."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(CLOSE_UNKNOWN)
