"""The visit's WebSockets: the display (a byte pipe between the browser and the
machine's VNC socket), the sound (the PCM QEMU plays, from an RFB connection of
the portal's own), and the events.

Owns: checking who may connect (origin, ownership), then copying bytes
until either side ends, and closing with the API's close codes.

Must not: decide anything about a machine's life. It tells the broker that a
viewer came or went; the broker owns the end (Daphne cancels a consumer 10 s
after the browser leaves, so nothing here may be needed for cleanup).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import DEFAULT_CHANNEL_LAYER
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext

from portal.language import close_reason, scope_language
from portal.server import SEND_FLOW_EXTENSION
from portal.visitor import visitor_id
from sessions.display.audio import (
    SILENCE_READ_INTERVAL_S,
    SOUND_READ_INTERVAL_S,
    AudioConnection,
    AudioError,
    SilenceGate,
    audio_format_for,
    audio_open,
)
from sessions.display.keyboard import KeyTranslator
from sessions.display.layouts import LayoutError, character_describe
from sessions.display.rfb import (
    KEY_EVENT,
    QEMU_MESSAGE,
    ClientStream,
    RfbRefusedError,
    ViewerGate,
    ViewerRefusedError,
    is_input,
)
from sessions.errors import SessionError, gettext_noop
from sessions.ids import session_id_valid
from sessions.machines.machine import vnc_refresh_soon
from sessions.models import VisitorSession
from sessions.node.broker import Broker, get_broker, session_group
from sessions.node.metrics import DISPLAY_FROM_BROWSER, DISPLAY_TO_BROWSER
from sessions.placement.watch import watch_session
from sessions.web.errors import error_close, stored_sentence
from sessions.web.representation import session_json
from sessions.web.tools import exhibit_layout

logger = logging.getLogger(__name__)

# The API's close codes (docs/api.md). autobahn, under Daphne, lets an
# application send only 1000 and 3000-4999; 1011 reaches the browser through
# the portal's server (portal.server), which sends what the application asks.
CLOSE_FORBIDDEN = 4403
CLOSE_UNKNOWN = 4404
CLOSE_ENDED = 4410
CLOSE_UNREACHABLE = 1011
# The machine was replaced (reset): the client should connect again at once.
CLOSE_RESTARTED = 4412
# A message the socket does not take (text on the binary display stream).
CLOSE_UNSUPPORTED_DATA = 4400
CLOSE_TOO_BIG = 4413
# The visit is still waiting in line: the display is not there yet.
CLOSE_TRY_LATER = 4409
CLOSE_TOO_MANY_VIEWERS = 4429
# The browser did not read the display for PORTAL_VIEWER_STUCK_S.
CLOSE_TOO_SLOW = 4408
# The owner revoked the watch link this watcher came by.
CLOSE_REVOKED = 4401

# The sentence sent with each code, for a person reading a client's log; the
# page has its own words for each code.
CLOSE_REASONS = {
    CLOSE_FORBIDDEN: gettext_noop("This machine belongs to another browser, or this page may not open it."),
    CLOSE_UNKNOWN: gettext_noop("There is no such session."),
    CLOSE_ENDED: gettext_noop("This machine has ended."),
    CLOSE_UNREACHABLE: gettext_noop("The machine's display cannot be reached."),
    CLOSE_RESTARTED: gettext_noop("The machine was replaced; connect again."),
    CLOSE_UNSUPPORTED_DATA: gettext_noop("This socket takes binary RFB messages only."),
    CLOSE_TOO_BIG: gettext_noop("A message was over the size limit."),
    CLOSE_TRY_LATER: gettext_noop("This visit is still waiting in line for a machine."),
    CLOSE_TOO_MANY_VIEWERS: gettext_noop("This machine is open in too many places; close one and try again."),
    CLOSE_TOO_SLOW: gettext_noop("The browser did not keep up with the display; connect again."),
    CLOSE_REVOKED: gettext_noop("The machine's owner revoked this watch link."),
}
# A watcher's name as its page gives it (`?watcher=…` on a watch link's socket).
WATCHER_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
# The largest message the page may send on the events WebSocket.
EVENTS_MAX_MESSAGE_BYTES = 4096

# How much of the display's output may wait here before the pipe stops reading
# the VNC socket (and so QEMU stops writing); the server's own buffer for the
# browser is bounded separately (SEND_FLOW_EXTENSION).
DISPLAY_BUFFER_BYTES = 2 * 1024 * 1024
# At most one notice a second that keys typed characters the guest's layout lacks.
UNTYPABLE_NOTICE_INTERVAL_S = 1.0


class VncPipe(asyncio.Protocol):
    """The VNC socket's end of the pipe: what QEMU sends waits here for the browser.

    Reads are taken as asyncio hands them over (up to 256 KiB each) and kept
    as they are, never copied into one buffer; the socket is read as soon as it
    is readable, so QEMU never waits on the WebSocket side's turn. Past
    DISPLAY_BUFFER_BYTES the socket is no longer read until the browser side
    has taken what waits.
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


async def session_authorize(
    scope: dict[str, Any], session_id: str
) -> tuple[int | None, VisitorSession | None]:
    """Who may open a session's WebSocket: its own browser, from an allowed page.

    Returns (close code or None, the session if it exists and is this browser's).
    """
    if not origin_allowed(scope):
        return CLOSE_FORBIDDEN, None
    if not session_id_valid(session_id):
        return CLOSE_UNKNOWN, None
    session = await VisitorSession.objects.select_related("exhibit").filter(id=session_id).afirst()
    if session is None:
        return CLOSE_UNKNOWN, None
    owner = await visitor_id(scope["session"], create=False)
    if owner is None or owner != session.owner:
        return CLOSE_FORBIDDEN, None
    return None, session


# A channel layer alias that names none: a socket that hears nothing from other
# processes opens no channel (with Redis, no subscription), so a display keeps
# working while Redis is away.
NO_CHANNEL_LAYER = "none"


class PortalSocket(AsyncWebsocketConsumer):
    """A portal WebSocket: closes with the API's codes and their sentences."""

    channel_layer_alias = NO_CHANNEL_LAYER

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # The socket speaks the language its page does (the language cookie, else
        # Accept-Language), as the HTTP API does under Django's LocaleMiddleware.
        with translation.override(scope_language(scope)):
            await super().__call__(scope, receive, send)

    async def close_with(self, code: int, reason: str | None = None) -> None:
        """Close with the API's code and its sentence, in the visitor's language."""
        text = reason or CLOSE_REASONS.get(code, "")
        # gettext("") is the catalogue's header, never a reason.
        await self.close(code, reason=close_reason(gettext(text)) if text else "")


class MachineSocket(PortalSocket):
    """A socket onto a running machine, its display or its sound: checked, counted by
    the broker while it is open, and closed with the API's codes when the machine
    goes (4412 when it was replaced, 4410 when the visit ended, 1011 otherwise)."""

    session_id: str = ""
    generation: int | None = None
    # Which of the broker's counts this socket is in: displays or listeners.
    sound = False
    _attached = False
    _reader_task: asyncio.Task[None] | None = None
    _pipe: VncPipe | None = None
    _input: ClientStream
    # Until the first screen update after the viewer's first request is handed on.
    _frame_awaited = True
    # Set once the portal has closed the socket: the pump, a task of its own, may be
    # about to send, and autobahn refuses a message after the close frame.
    _closing = False

    async def machine_attach(self) -> tuple[VisitorSession, Path] | None:
        """Accept, check who asks, and wait for the machine; None once closed with a code."""
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        subprotocols = self.scope.get("subprotocols") or []
        # A close code only reaches the browser after the handshake, so accept first.
        await self.accept("binary" if "binary" in subprotocols else None)
        code, session = await session_authorize(self.scope, self.session_id)
        if code is None and session is not None and not session.is_live:
            code = CLOSE_ENDED
        if code is not None or session is None:
            await self.close_with(code or CLOSE_UNKNOWN)
            return None
        broker = await get_broker()
        try:
            if self.sound:
                vnc_path = await broker.viewers.sound_attach(session_id=self.session_id)
            else:
                vnc_path = await broker.viewers.display_attach(session_id=self.session_id)
        except SessionError as error:
            await self.close_with(*error_close(error))
            return None
        self._attached = True
        self.generation = broker.keeper.generation(self.session_id)
        return session, vnc_path

    async def close_with(self, code: int, reason: str | None = None) -> None:
        # A socket the portal closes stops counting at once, not when the
        # browser has answered: it may reconnect straight away (4412, 4408).
        self._closing = True
        await self._detach()
        await super().close_with(code, reason)

    async def send_bytes(self, data: bytes) -> bool:
        """Send a binary message; False (and nothing sent) once the socket is closing."""
        if self._closing:
            return False
        await self.send(bytes_data=data)
        return True

    async def _detach(self) -> None:
        if self._attached:
            self._attached = False
            broker = await get_broker()
            if self.sound:
                broker.viewers.sound_detach(session_id=self.session_id)
            else:
                broker.viewers.display_detach(session_id=self.session_id)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs close_old_connections() in a worker thread before every
        # message; the pipe touches no database per message, and that thread hop
        # was most of the latency a keystroke or an update request spent here.
        if message["type"] == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def _close_after_machine_end(self) -> None:
        """The machine's socket went away: say whether the session ended, the machine
        was replaced, or the display broke."""
        broker = await get_broker()
        current = broker.keeper.generation(self.session_id)
        if current is not None and current != self.generation:
            await self.close_with(CLOSE_RESTARTED)
            return
        ended = await broker.keeper.wait_ended(
            session_id=self.session_id, timeout_s=broker.config.machines.stop_timeout_s
        )
        if not ended and broker.keeper.generation(self.session_id) not in {None, self.generation}:
            await self.close_with(CLOSE_RESTARTED)  # a reset began while it was waiting
            return
        await self.close_with(CLOSE_ENDED if ended else CLOSE_UNREACHABLE)


class VncConsumer(MachineSocket):
    """`/ws/sessions/<id>/vnc`: RFB bytes in binary messages."""

    _reader_task: asyncio.Task[None] | None = None
    _pipe: VncPipe | None = None
    _input: ClientStream
    _vnc_path: Path | None = None
    # The viewer's first update request has not reached QEMU yet (see vnc_refresh_soon).
    _refresh_due = True
    # The visitor's keys on the guest's layout; None where the layout cannot be read.
    _keys: KeyTranslator | None = None
    _untypable: list[str]
    _untypable_told = -UNTYPABLE_NOTICE_INTERVAL_S

    def _keys_prepare(self, session: VisitorSession) -> None:
        """The guest's layout, and the row's key mode for the sockets of this node."""
        try:
            self._keys = KeyTranslator(exhibit_layout(session.exhibit))
        except LayoutError as error:
            logger.warning("session %s: keys go by position: %s", self.session_id, error)

    async def connect(self) -> None:
        self._input = ClientStream()
        self._untypable = []
        attached = await self.machine_attach()
        if attached is None:
            return
        session, vnc_path = attached
        self._keys_prepare(session)
        (await get_broker()).viewers.key_mode_set(session_id=self.session_id, key_mode=session.key_mode)
        self._vnc_path = vnc_path
        # The machine's first viewer takes the connection opened before it ran
        # (its first picture comes without waiting for QEMU's refresh timer).
        early = (await get_broker()).display_connection_take(session_id=self.session_id)
        loop = asyncio.get_running_loop()
        try:
            if early is not None:
                _, self._pipe = await loop.create_unix_connection(VncPipe, sock=early)
            else:
                _, self._pipe = await loop.create_unix_connection(VncPipe, str(vnc_path))
        except OSError as error:
            logger.warning("session %s: VNC socket unreachable: %s", self.session_id, error)
            await self._close_after_machine_end()
            return
        self._reader_task = asyncio.create_task(self._pump_guarded(self._pipe))

    async def _pump_guarded(self, pipe: VncPipe) -> None:
        # The pump is a task of its own: an error in it would otherwise go
        # unnoticed and leave the browser in front of a display that never moves.
        try:
            await self._pump_to_browser(pipe)
        except Exception:
            logger.exception("session %s: the display pipe failed", self.session_id)
            await self.close_with(CLOSE_UNREACHABLE)

    async def _pump_to_browser(self, pipe: VncPipe) -> None:
        # One read from the socket becomes one WebSocket message, as it arrived.
        # Past the server's buffer for this browser, nothing more is handed over
        # (and, past DISPLAY_BUFFER_BYTES here, the VNC socket is not read) until
        # the browser has read it; a browser that reads nothing for
        # PORTAL_VIEWER_STUCK_S is closed.
        flow = self.scope.get("extensions", {}).get(SEND_FLOW_EXTENSION)
        stuck_s = settings.PORTAL_VIEWER_STUCK_S
        while chunks := await pipe.taken():
            if self._frame_awaited and self._input.update_requested:
                # The viewer asked for the screen: this is QEMU's first update to it.
                self._frame_awaited = False
                (await get_broker()).display_first_frame(session_id=self.session_id)
            for chunk in chunks:
                if not await self.send_bytes(chunk):
                    return
                DISPLAY_TO_BROWSER.inc(len(chunk))
                if flow is not None and flow.paused and not await flow.resumed(timeout_s=stuck_s):
                    logger.warning("session %s: a viewer read nothing for %g s; closing it (%d)",
                                   self.session_id, stuck_s, CLOSE_TOO_SLOW)
                    await self.close_with(CLOSE_TOO_SLOW)
                    return
        if pipe.error is not None:
            logger.info("session %s: VNC read ended: %s", self.session_id, pipe.error)
        await self._close_after_machine_end()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._pipe is None:
            return
        if bytes_data is None:
            # RFB is binary; a text message is a client speaking something else.
            await self.close_with(CLOSE_UNSUPPORTED_DATA)
            return
        if len(bytes_data) > settings.PORTAL_WS_MAX_MESSAGE_BYTES:
            # Dropping part of an RFB stream would garble it: the connection ends,
            # the machine does not (the page reconnects).
            limit = settings.PORTAL_WS_MAX_MESSAGE_BYTES
            await self.close_with(CLOSE_TOO_BIG, gettext("A message of %(size)s bytes is over the limit of "
                                                         "%(limit)s bytes.") % {"size": len(bytes_data),
                                                                                "limit": limit})
            return
        DISPLAY_FROM_BROWSER.inc(len(bytes_data))
        try:
            messages = self._input.feed(bytes_data)
        except RfbRefusedError as error:
            logger.info("session %s: a display was closed: %s", self.session_id, error)
            await self.close_with(error.close_code, str(error))
            return
        if not messages:
            return
        broker = await get_broker()
        if any(is_input(message) for message in messages if len(message) in {6, 8, 12}):
            broker.keeper.session_input(session_id=self.session_id)
            passed = b"".join(self._key_translated(message, broker) for message in messages)
        else:
            passed = b"".join(messages)
        try:
            if passed:
                await self._pipe.write(passed)
        except (ConnectionError, OSError):
            await self._close_after_machine_end()
            return
        if self._refresh_due and self._input.update_requested and self._vnc_path is not None:
            # QEMU answers the request at its next refresh; that it comes at once.
            self._refresh_due = False
            await vnc_refresh_soon(self._vnc_path)

    def _key_translated(self, message: bytes, broker: Broker) -> bytes:
        """A whole client message as it goes to QEMU: keys through the visit's key mode
        on the guest's layout, anything else as it came."""
        is_key = (message[0] == KEY_EVENT and len(message) == 8) \
            or (message[0] == QEMU_MESSAGE and len(message) == 12)
        if self._keys is None or not is_key:
            return message
        passed, untypable = self._keys.translate(message, broker.viewers.key_mode(self.session_id))
        if untypable is not None:
            self._untypable_report(untypable, broker)
        return passed

    def _untypable_report(self, character: str, broker: Broker) -> None:
        """Tell the page (its events socket) which characters typed nothing, at most
        once a second, so a burst of keys makes a few notices, not thousands."""
        if character not in self._untypable:
            self._untypable.append(character)
        now = asyncio.get_running_loop().time()
        if now - self._untypable_told < UNTYPABLE_NOTICE_INTERVAL_S:
            return
        self._untypable_told = now
        characters, self._untypable = self._untypable[:10], []
        shown = ", ".join(character_describe(character) for character in characters)
        broker.viewers.keys_untypable(session_id=self.session_id, characters=characters, detail=gettext(
            "The machine's keyboard layout cannot type these characters, so nothing was sent: "
            "%(characters)s.") % {"characters": shown})

    async def disconnect(self, code: int) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pipe, self._pipe = self._pipe, None
        if pipe is not None and pipe.transport is not None:
            pipe.transport.close()
        await self._detach()


class WatchConsumer(VncConsumer):
    """`/ws/watch/<token>/vnc`: the machine's display for anyone with a watch link,
    read-only, enforced here: the browser's stream goes through a `ViewerGate`,
    so only the handshake and requests for pictures reach QEMU; the first key,
    mouse event, clipboard text or any other message closes the socket with 4400
    and a sentence. A watcher is never input (the idle limit runs on) and never a
    viewer (it keeps no machine alive); there are at most
    PORTAL_WATCHERS_PER_SESSION (then 4429), and the owner's revoke closes each
    with 4401. The one watcher the owner hands the keyboard and mouse to has its
    keys and pointer events passed on (and counted as input) until the owner
    takes them back.
    """

    _gate: ViewerGate
    _watching = False
    _revoke_task: asyncio.Task[None] | None = None
    watcher_id = ""

    async def machine_attach(self) -> tuple[VisitorSession, Path] | None:
        self._gate = ViewerGate()
        # The page names its socket (`?watcher=…`), so it can ask whether the owner
        # handed it the keyboard and mouse; a client that does not is named here.
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        named = (query.get("watcher") or [""])[0]
        self.watcher_id = named if WATCHER_ID.fullmatch(named) else secrets.token_hex(8)
        subprotocols = self.scope.get("subprotocols") or []
        await self.accept("binary" if "binary" in subprotocols else None)
        if not origin_allowed(self.scope):
            await self.close_with(CLOSE_FORBIDDEN)
            return None
        session = await watch_session(self.scope["url_route"]["kwargs"]["token"])
        if session is None:
            await self.close_with(CLOSE_UNKNOWN,
                                  gettext_noop("This watch link was revoked, or never existed."))
            return None
        self.session_id = session.id
        if not session.is_live:
            await self.close_with(CLOSE_ENDED)
            return None
        broker = await get_broker()
        try:
            vnc_path = await broker.viewers.watcher_attach(
                session_id=self.session_id, watcher_id=self.watcher_id, revoke=self._revoked)
        except SessionError as error:
            await self.close_with(*error_close(error))
            return None
        self._watching = True
        self.generation = broker.keeper.generation(self.session_id)
        return session, vnc_path

    def _revoked(self) -> None:
        """The owner revoked the links (the keeper has let this watcher go already)."""
        self._watching = False
        self._revoke_task = asyncio.ensure_future(self.close_with(CLOSE_REVOKED))

    async def _detach(self) -> None:
        if self._watching:
            self._watching = False
            broker = await get_broker()
            broker.viewers.watcher_detach(session_id=self.session_id, watcher_id=self.watcher_id)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._pipe is None:
            return
        if bytes_data is None:
            await self.close_with(CLOSE_UNSUPPORTED_DATA)
            return
        if len(bytes_data) > settings.PORTAL_WS_MAX_MESSAGE_BYTES:
            await self.close_with(CLOSE_TOO_BIG)
            return
        broker = await get_broker()
        self._gate.control = broker.viewers.in_control(self.session_id, self.watcher_id)
        # A watcher handed the keyboard types as the owner does.
        self._gate.key_filter = lambda message: self._key_translated(message, broker)
        try:
            passed = self._gate.feed(bytes_data)
        except ViewerRefusedError as error:
            logger.info("session %s: a watcher was closed: %s", self.session_id, error)
            await self.close_with(CLOSE_UNSUPPORTED_DATA, str(error))
            return
        if self._gate.saw_input:
            # The watcher the owner handed the keyboard and mouse is using them.
            broker.keeper.session_input(session_id=self.session_id)
        if not passed:
            return
        DISPLAY_FROM_BROWSER.inc(len(passed))
        try:
            await self._pipe.write(passed)
        except (ConnectionError, OSError):
            await self._close_after_machine_end()


class AudioConsumer(MachineSocket):
    """`/ws/sessions/<id>/audio`: the machine's sound. First a text message with the
    format, then binary messages of PCM in it, as the guest plays.

    Its own RFB connection to the machine asks QEMU for sound and no pictures
    (sessions.display.audio), so the sound never waits behind the display, nor the
    display behind the sound. Silence is not sent (after a short hold that keeps
    the rests inside music). Sound the browser cannot take now is dropped, not
    queued: it would only be late later; a browser that takes nothing for
    PORTAL_VIEWER_STUCK_S while there is sound (or none of that much sound) is
    closed with 4408.
    """

    sound = True
    _reader_task: asyncio.Task[None] | None = None
    _connection: AudioConnection | None = None

    async def connect(self) -> None:
        attached = await self.machine_attach()
        if attached is None:
            return
        session, vnc_path = attached
        audio_format = audio_format_for(session.exhibit.machine_profile().sound)
        broker = await get_broker()
        try:
            self._connection = await audio_open(vnc_path, audio_format,
                                                timeout_s=broker.config.machines.qmp_timeout_s)
        except AudioError as error:
            logger.warning("session %s: no sound from the VNC socket: %s", self.session_id, error)
            await self._close_after_machine_end()
            return
        await self.send(text_data=json.dumps(audio_format.message()))
        self._reader_task = asyncio.create_task(self._pump_guarded(self._connection))

    async def _pump_guarded(self, connection: AudioConnection) -> None:
        try:
            await self._pump_to_browser(connection)
        except AudioError as error:
            logger.warning("session %s: the sound pipe failed: %s", self.session_id, error)
            await self.close_with(CLOSE_UNREACHABLE)
        except Exception:
            logger.exception("session %s: the sound pipe failed", self.session_id)
            await self.close_with(CLOSE_UNREACHABLE)

    async def _pump_to_browser(self, connection: AudioConnection) -> None:
        flow = self.scope.get("extensions", {}).get(SEND_FLOW_EXTENSION)
        stuck_s = settings.PORTAL_VIEWER_STUCK_S
        gate = SilenceGate(connection.format)
        loop = asyncio.get_running_loop()
        stuck_since: float | None = None
        # Sound dropped since then, in seconds of sound: sound read late (a busy host)
        # comes in a burst, and a listener that took none of stuck_s of it is stuck
        # however short the burst.
        dropped_s = 0.0
        async for chunk in connection.chunks():
            pcm = gate.admit(chunk)
            if not pcm:
                await connection.rest(SILENCE_READ_INTERVAL_S)
                continue
            if flow is not None and flow.paused:
                now = loop.time()
                stuck_since = now if stuck_since is None else stuck_since
                dropped_s += len(pcm) / connection.format.bytes_per_second
                if max(now - stuck_since, dropped_s) >= stuck_s:
                    logger.warning("session %s: a listener read nothing for %g s; closing it (%d)",
                                   self.session_id, stuck_s, CLOSE_TOO_SLOW)
                    await self.close_with(CLOSE_TOO_SLOW)
                    return
                continue
            stuck_since, dropped_s = None, 0.0
            if not await self.send_bytes(pcm):
                return
            await connection.rest(SOUND_READ_INTERVAL_S)
        if connection.error is not None:
            logger.info("session %s: VNC read for sound ended: %s", self.session_id, connection.error)
        await self._close_after_machine_end()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._attached:
            await self.close_with(CLOSE_UNSUPPORTED_DATA,
                                  gettext_noop("This socket sends sound; it takes no messages."))

    async def disconnect(self, code: int) -> None:
        task, self._reader_task = self._reader_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
        await self._detach()


class EventsConsumer(PortalSocket):
    """`/ws/sessions/<id>/events`: the session's state, warnings and end, as JSON.

    The page may send `{"type": "active"}` (the visitor answered an idle
    warning) and `{"type": "screen_text", "listen": true|false}` (its Screen as
    text panel opened or closed: while it listens, `screen_text` messages say
    when the text changed). Anything else gets an `error` message back; nothing
    is lost.
    """

    channel_layer_alias = DEFAULT_CHANNEL_LAYER
    session_id: str = ""
    _group: str | None = None
    _attached = False
    _screen_stop: Callable[[], None] | None = None

    async def connect(self) -> None:
        self.session_id = self.scope["url_route"]["kwargs"]["session_id"]
        await self.accept()
        code, session = await session_authorize(self.scope, self.session_id)
        if code is not None or session is None:
            await self.close_with(code or CLOSE_UNKNOWN)
            return
        broker = await get_broker()
        if session.is_live:
            # Joined before the first state is read, so no change can fall between.
            self._group = session_group(self.session_id)
            await self.channel_layer.group_add(self._group, self.channel_name)
            self._attached = broker.viewers.watch_attach(session_id=self.session_id)
        await self._send_state(session)

    async def _send_state(self, session: VisitorSession | None = None, *,
                          place: Sequence[float] | None = None) -> None:
        """The session as it is now (a fresh read unless the caller just made one);
        `place`: its place in line and wait, as the broker read them for the whole line."""
        if session is None:
            session = await VisitorSession.objects.select_related("exhibit").aget(id=self.session_id)
        broker = await get_broker()
        await self._send({"type": "state", **await session_json(session, broker, place=place)})
        if not session.is_live:
            await self._send({"type": "ended", "reason": session.ended_reason,
                              "detail": stored_sentence(session.detail)})
            await self.close_with(CLOSE_ENDED)

    async def session_event(self, message: dict[str, Any]) -> None:
        """A broker event for this session (delivered through the channel layer)."""
        event = message["event"]
        if event.get("type") == "changed":
            # The broker's line read tells a waiting visit its place ([position, wait]).
            await self._send_state(place=event.get("line"))
        elif event.get("type") == "print_failed":
            # Its sentence in the page's language, its values put in after.
            params = event.get("params") or {}
            await self._send({"type": "print_failed",
                              "detail": gettext(event["message"]) % params if params
                              else gettext(event["message"])})
        else:
            await self._send(event)

    async def _send(self, payload: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(payload))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        data = text_data if text_data is not None else bytes_data
        message: Any = None
        if data is not None and len(data) <= EVENTS_MAX_MESSAGE_BYTES:
            with contextlib.suppress(ValueError):
                message = json.loads(data)
        if isinstance(message, dict) and message.get("type") == "screen_text" \
                and isinstance(message.get("listen"), bool):
            await self._screen_listen(message["listen"])
            return
        if not isinstance(message, dict) or message.get("type") != "active":
            await self._send({"type": "error", "error": "bad_message",
                              "detail": 'This socket accepts only {"type": "active"} and '
                                        '{"type": "screen_text", "listen": true|false}.'})
            return
        (await get_broker()).keeper.session_input(session_id=self.session_id)

    async def _screen_listen(self, listen: bool) -> None:
        """Start or stop listening to the screen's text (one reader per machine)."""
        if self._screen_stop is not None:
            self._screen_stop()
            self._screen_stop = None
        if not listen:
            return
        try:
            self._screen_stop = (await get_broker()).screens.listen(session_id=self.session_id,
                                                                    listener=self._send)
        except SessionError as error:
            await self._send({"type": "error", "error": error.code, "detail": str(error)})

    async def disconnect(self, code: int) -> None:
        if self._screen_stop is not None:
            self._screen_stop()
            self._screen_stop = None
        if self._group is not None:
            await self.channel_layer.group_discard(self._group, self.channel_name)
            self._group = None
        if self._attached:
            self._attached = False
            (await get_broker()).viewers.watch_detach(session_id=self.session_id)


class UnknownPathConsumer(PortalSocket):
    """Any other WebSocket path: accepted only to say 4404, never an error page."""

    async def connect(self) -> None:
        await self.accept()
        await self.close_with(CLOSE_UNKNOWN)
