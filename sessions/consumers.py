"""The display WebSocket: a byte pipe between the browser and the machine's VNC socket.

Owns: checking who may connect (origin, ownership), then copying bytes both
ways until either side ends, and closing with the API's close codes.

Must not: decide anything about a machine's life. It tells the broker that a
viewer came or went; the broker owns the end (Daphne cancels a consumer 10 s
after the browser leaves, so nothing here may be needed for cleanup).
"""
from __future__ import annotations

import asyncio
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

# One read from the VNC socket becomes one WebSocket message: large enough
# that a full-screen update is a few messages, small enough to start flowing
# before QEMU has finished writing it.
READ_CHUNK_BYTES = 256 * 1024


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
    _writer: asyncio.StreamWriter | None = None

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
            reader, self._writer = await asyncio.open_unix_connection(
                vnc_path, limit=READ_CHUNK_BYTES
            )
        except OSError as error:
            logger.warning("session %s: VNC socket unreachable: %s", self.session_id, error)
            await self._close_after_display_end()
            return
        self._reader_task = asyncio.create_task(self._pump_to_browser(reader))

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

    async def _pump_to_browser(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                chunk = await reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                await self.send(bytes_data=chunk)
        except (ConnectionError, OSError) as error:
            logger.info("session %s: VNC read ended: %s", self.session_id, error)
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

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._writer is None:
            return
        if bytes_data is None:
            # RFB is binary; a text message is a client speaking something else.
            await self.close(CLOSE_UNSUPPORTED_DATA)
            return
        try:
            self._writer.write(bytes_data)
            await self._writer.drain()
        except (ConnectionError, OSError):
            await self._close_after_display_end()

    async def disconnect(self, code: int) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._attached:
            self._attached = False
            broker = await get_broker()
            broker.display_detach(session_id=self.session_id)


class UnknownPathConsumer(AsyncWebsocketConsumer):
    """Any other WebSocket path: accepted only to say 4404, never an error page."""

    async def connect(self) -> None:
        await self.accept()
        await self.close(CLOSE_UNKNOWN)
