"""The relay: a visitor's request for a visit reaches the node that holds it.

Owns: one thing, piping a request that names a visit (its page and API over
HTTP, its sockets over WebSocket) to the node that holds the visit, when that
is another node. Only the holder has the visit's machine, its display socket,
its viewers and its clocks, while nginx spreads requests over the nodes with no
affinity; so any node takes the request and pipes it on:

- HTTP: the same method, path, query, body and headers, plus the visitor's
  address in `X-Forwarded-For` (the holder, started with --proxy-headers,
  believes the header's first address, so the relay sets it to the address
  this node saw and drops whatever the visitor sent) and `X-Portal-Relayed-By`
  naming this node. The holder's status, headers (Set-Cookie too) and body
  come back as they are.
- WebSocket: the visitor's socket is accepted once the holder accepted the
  relay's (a refusal before that is a refusal here too), then text and binary
  messages go both ways, and each side's close code and sentence reaches the
  other. Nothing more than a bounded amount waits here for a visitor who stops
  reading: the holder's socket is no longer read while the visitor's
  connection is backed up (the server's send flow), so the holder, in turn,
  stops reading its machine's display.
- A holder that cannot be reached: `502 {"error": "node_unreachable"}` or
  close code 1011, each with a sentence.

Where a visit is held is the runtime's answer (`holder_find`, handed in by
`portal.asgi`, the composition root; a watch link names its visit by a token,
which `watch_find` turns into the visit's id first); a request it names no other node for,
or one another node relayed already, is served here by the application inside.

Must not: decide anything about a visit, read the database itself, or relay a
request twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from django.conf import settings
from django.utils import translation
from django.utils.translation import gettext, gettext_noop
from multidict import CIMultiDict
from yarl import URL

from .language import close_reason, scope_language
from .server import SEND_FLOW_EXTENSION

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Application = Callable[[Scope, Receive, Send], Awaitable[None]]
# A session id from a path → the "host:port" of the other node that holds it, or
# None to serve the request here.
HolderFind = Callable[[str], Awaitable[str | None]]
# A watch link's token from a path → the id of the visit it names, or None.
WatchFind = Callable[[str], Awaitable[str | None]]

RELAYED_BY = b"x-portal-relayed-by"
# The paths that name a visit, by scope type; the group is the session id.
VISIT_PATHS = {
    "http": re.compile(r"/(?:api/)?sessions/([^/]+)(?:/.*)?", re.DOTALL),
    "websocket": re.compile(r"/ws/sessions/([^/]+)/.*", re.DOTALL),
}
# The paths that name a visit by a watch link's token (the group), by scope type.
WATCH_PATHS = {
    "http": re.compile(r"/(?:api/)?watch/([^/]+)(?:/.*)?", re.DOTALL),
    "websocket": re.compile(r"/ws/watch/([^/]+)/.*", re.DOTALL),
}
# Headers of one connection (RFC 9110, 7.6.1), and those the relay sets itself.
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
               b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate"}
_SET_HERE = {b"x-forwarded-for", b"x-forwarded-port", b"x-forwarded-proto", RELAYED_BY,
             b"content-length", b"expect"}
_WEBSOCKET_HANDSHAKE = {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
                        b"sec-websocket-protocol", b"sec-websocket-accept"}
_REQUEST_SKIP = _HOP_BY_HOP | _SET_HERE
_HANDSHAKE_SKIP = _REQUEST_SKIP | _WEBSOCKET_HANDSHAKE
# Only the visitor's own headers go on: none that the client library would add.
_AUTOMATIC_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

# The API's close codes the relay chooses itself (docs/api.md).
CLOSE_UNREACHABLE = 1011
CLOSE_TOO_SLOW = 4408
# Sentences for the visitor, in their language when sent (the relay runs before Django's
# middleware: it reads the language from the request itself, as the sockets do).
UNREACHABLE_DETAIL = gettext_noop("The server running this machine cannot be reached; try again in a moment.")
HOLDER_GONE_REASON = gettext_noop("The server running this machine stopped answering.")
TOO_SLOW_REASON = gettext_noop("The browser did not keep up with the display; connect again.")
# Largest message taken from the holder: a display message is one read of its
# VNC socket (at most 256 KiB), an events message a few hundred bytes.
HOLDER_MESSAGE_MAX_BYTES = 4 * 1024 * 1024


def close_code_sendable(code: int | None) -> bool:
    """Whether a close frame may carry this code (RFC 6455, 7.4)."""
    return code is not None and (code in {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011}
                                 or 3000 <= code <= 4999)


class Relay:
    """ASGI middleware around the whole application: relays what names a visit held elsewhere."""

    def __init__(self, application: Application, *, holder_find: HolderFind,
                 node_name: Callable[[], str], watch_find: WatchFind | None = None) -> None:
        self.application = application
        self.holder_find = holder_find
        self.watch_find = watch_find
        self.node_name = node_name
        self._client: aiohttp.ClientSession | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        address = await self.holder_address(scope)
        if address is None:
            await self.application(scope, receive, send)
        else:
            with translation.override(scope_language(scope)):
                if scope["type"] == "http":
                    await self._http(scope, receive, send, address)
                else:
                    await self._websocket(scope, receive, send, address)

    async def holder_address(self, scope: Scope) -> str | None:
        """Where to pipe this request; None to serve it here."""
        path = scope.get("path", "")
        pattern = VISIT_PATHS.get(scope["type"])
        match = pattern.fullmatch(path) if pattern is not None else None
        watch = WATCH_PATHS.get(scope["type"])
        watched = watch.fullmatch(path) if watch is not None and self.watch_find is not None else None
        if match is None and watched is None:
            return None
        if any(name.lower() == RELAYED_BY for name, _ in scope.get("headers", ())):
            return None  # from another node: never twice (a visitor forging it is served here)
        try:
            if match is not None:
                return await self.holder_find(match[1])
            assert watched is not None
            assert self.watch_find is not None
            # A watch link names its visit by a token: the visit first, then its holder.
            session_id = await self.watch_find(watched[1])
            return await self.holder_find(session_id) if session_id is not None else None
        except Exception as error:
            # The application here answers as it would without a relay (a database
            # that is away gets its JSON 500 there).
            logger.warning("could not look up the node holding the visit of %s (%s); serving it here",
                           path[:64], error)
            return None

    async def close(self) -> None:
        """Close the connections kept to other nodes (tests and benchmarks)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.closed or self._client_loop is not loop:
            self._client = aiohttp.ClientSession(
                # Each relayed WebSocket holds a connection of its own for its life:
                # how many there are is bounded by the visitors, not by a pool.
                connector=aiohttp.TCPConnector(limit=0),
                # Visitors' cookies pass through in their headers; none is ever kept.
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=_AUTOMATIC_HEADERS,
                trust_env=False,
            )
            self._client_loop = loop
        return self._client

    def _headers(self, scope: Scope, *, skip: set[bytes]) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict(
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ()) if name.lower() not in skip)
        client = scope.get("client")
        if client:
            headers["X-Forwarded-For"] = str(client[0])
            headers["X-Forwarded-Port"] = str(client[1])
        scheme = str(scope.get("scheme") or ("ws" if scope["type"] == "websocket" else "http"))
        headers["X-Forwarded-Proto"] = {"ws": "http", "wss": "https"}.get(scheme, scheme)
        headers[RELAYED_BY.decode()] = self.node_name()
        return headers

    # --- HTTP ------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        # The visitor may leave while the holder answers: the exchange is then cancelled.
        exchange = asyncio.create_task(self._http_exchange(scope, bytes(body), send, address))
        left = asyncio.create_task(_http_disconnected(receive))
        try:
            await asyncio.wait({exchange, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (left, exchange):
                task.cancel()
            await asyncio.wait({left, exchange})
        if not exchange.cancelled():
            exchange.result()  # an unexpected failure is the server's to report

    async def _http_exchange(self, scope: Scope, body: bytes, send: Send, address: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.PORTAL_RELAY_CONNECT_TIMEOUT_S,
                                        sock_read=settings.PORTAL_RELAY_READ_TIMEOUT_S)
        started = False
        try:
            async with self._session().request(
                    scope["method"], _target("http", address, scope),
                    headers=self._headers(scope, skip=_REQUEST_SKIP), data=body or None,
                    allow_redirects=False, timeout=timeout) as response:
                await send({"type": "http.response.start", "status": response.status,
                            "headers": [(name, value) for name, value in response.raw_headers
                                        if name.lower() not in _HOP_BY_HOP]})
                started = True
                async for chunk in response.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            if started:
                logger.warning("the answer of node %s for %s broke off: %s", address, scope["path"],
                               error or type(error).__name__)
            else:
                logger.warning("node %s, holding %s, cannot be reached: %s", address, scope["path"],
                               error or type(error).__name__)
                await _node_unreachable(send)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # --- WebSocket -------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, address: str) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        connect_s = settings.PORTAL_RELAY_CONNECT_TIMEOUT_S
        try:
            async with asyncio.timeout(connect_s):
                holder = await self._session().ws_connect(
                    _target("ws", address, scope), headers=self._headers(scope, skip=_HANDSHAKE_SKIP),
                    protocols=tuple(scope.get("subprotocols") or ()), compress=0,
                    max_msg_size=HOLDER_MESSAGE_MAX_BYTES,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=connect_s))
        except aiohttp.WSServerHandshakeError as refused:
            # Refused before it was accepted: so is the visitor's (the server answers 403).
            logger.info("node %s refused the WebSocket %s (%s)", address, scope["path"], refused.status)
            await send({"type": "websocket.close"})
            return
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("node %s, holding %s, cannot be reached: %s", address, scope["path"],
                           error or type(error).__name__)
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": CLOSE_UNREACHABLE,
                        "reason": close_reason(gettext(UNREACHABLE_DETAIL))})
            return
        try:
            await send({"type": "websocket.accept", "subprotocol": holder.protocol})
            to_visitor = asyncio.create_task(self._to_visitor(scope, send, holder))
            to_holder = asyncio.create_task(_to_holder(receive, holder))
            try:
                await asyncio.wait({to_visitor, to_holder}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await _tasks_end(to_visitor, to_holder)
        finally:
            with contextlib.suppress(Exception):
                await holder.close(code=1001)

    async def _to_visitor(self, scope: Scope, send: Send, holder: aiohttp.ClientWebSocketResponse) -> None:
        """The holder's messages and its close, until it closes or the visitor is stuck."""
        flow = scope.get("extensions", {}).get(SEND_FLOW_EXTENSION)
        while True:
            message = await holder.receive()
            if message.type is aiohttp.WSMsgType.BINARY:
                await send({"type": "websocket.send", "bytes": message.data})
            elif message.type is aiohttp.WSMsgType.TEXT:
                await send({"type": "websocket.send", "text": message.data})
            elif message.type is aiohttp.WSMsgType.CLOSE:
                code = message.data if close_code_sendable(message.data) else 1000
                await send({"type": "websocket.close", "code": code, "reason": message.extra or ""})
                return
            elif message.type is aiohttp.WSMsgType.CLOSING:
                return  # the visitor left and the relay is closing the holder's socket
            else:
                # Gone without a close frame (a crash, a cut connection).
                logger.warning("node holding %s: the socket ended without a close (%s)",
                               scope["path"], holder.exception() or message.type.name)
                await send({"type": "websocket.close", "code": CLOSE_UNREACHABLE,
                            "reason": close_reason(gettext(HOLDER_GONE_REASON))})
                return
            # Past the server's buffer for the visitor, the holder's socket is not read
            # (so the holder stops reading the machine's display for it) until the
            # visitor has read what waits; one who reads nothing is closed, as at the holder.
            if flow is not None and flow.paused:
                stuck_s = settings.PORTAL_VIEWER_STUCK_S
                if not await flow.resumed(timeout_s=stuck_s):
                    logger.warning("%s: a viewer read nothing for %g s; closing it (%d)",
                                   scope["path"], stuck_s, CLOSE_TOO_SLOW)
                    await send({"type": "websocket.close", "code": CLOSE_TOO_SLOW,
                                "reason": close_reason(gettext(TOO_SLOW_REASON))})
                    await holder.close(code=CLOSE_TOO_SLOW, message=TOO_SLOW_REASON.encode())
                    return


async def _to_holder(receive: Receive, holder: aiohttp.ClientWebSocketResponse) -> None:
    """The visitor's messages, until the visitor leaves; then its close code to the holder."""
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            code: int | None = message.get("code")
            if code is None or not close_code_sendable(code):
                # 1005 (closed without a code) and 1006 (without a close frame) cannot be sent on.
                code = 1000 if code == 1005 else 1001
            await holder.close(code=code, message=str(message.get("reason") or "").encode())
            return
        if message["type"] != "websocket.receive":
            continue
        try:
            if message.get("bytes") is not None:
                await holder.send_bytes(message["bytes"])
            elif message.get("text") is not None:
                await holder.send_str(message["text"])
        except (ConnectionError, aiohttp.ClientError):
            # The holder is closing: its close code reaches the visitor the other way.
            pass


def _target(scheme: str, address: str, scope: Scope) -> URL:
    """The request's own path and query (as the visitor sent them) on the holder."""
    raw_path = scope.get("raw_path") or quote(scope["path"]).encode()
    target = raw_path.decode("latin-1")
    query = scope.get("query_string") or b""
    if query:
        target += "?" + query.decode("latin-1")
    return URL(f"{scheme}://{address}{target}", encoded=True)


async def _http_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _node_unreachable(send: Send) -> None:
    body = json.dumps({"error": "node_unreachable", "detail": gettext(UNREACHABLE_DETAIL)}).encode()
    await send({"type": "http.response.start", "status": 502,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _tasks_end(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks that still run and wait for all of them; log what failed."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            try:
                await task
            except Exception:
                logger.exception("a relay pipe failed")
