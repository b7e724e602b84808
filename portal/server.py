"""The portal's server: Daphne, with what a public site needs from its transport.

Owns: three things Daphne leaves to the application but cannot give it
through ASGI, added by subclassing Daphne's own classes:

- Send flow. Awaiting an ASGI `send` does not wait for the browser: Twisted
  buffers whatever it is given. Each WebSocket's scope carries
  `scope["extensions"]["portal.send_flow"]`, a `SendFlow` that says when the
  connection's write buffer is full and wakes the application when the
  browser has read it, so a stream can stop reading its source instead of
  growing the server (Twisted's own producer protocol, in the event loop that
  Twisted and asyncio share).
- Close frames as the application asks for them: its code (including 1011,
  which RFC 6455 allows a server and autobahn's public API does not) and its
  reason sentence; a message over autobahn's size limit answered with the
  portal's close code instead of a dropped TCP connection; and a message the
  application sends after the browser's close frame dropped, not raised.
- Request bodies refused by their declared (or, when chunked, received) size
  before they are read: Daphne hands a whole body to the application at once,
  so a large body to any URL would otherwise sit in memory.

It also tells the application where the other nodes reach this one: with
`PORTAL_NODE_ADDRESS` unset, the address and port it listens on go into the
environment before the application (and so the settings) is imported.

Must not: know about sessions or machines. Run it as Daphne's command line is
run: `python -m portal.server -b 127.0.0.1 -p 8000 portal.asgi:application`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

from autobahn.util import encode_truncate
from daphne.cli import DEFAULT_HOST, DEFAULT_PORT, CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from portal.runtime import runtime_shutdown

logger = logging.getLogger("portal.server")  # also when run as __main__

SEND_FLOW_EXTENSION = "portal.send_flow"
# A browser's message over autobahn's limit (Daphne's --websocket-max-message-size)
# gets the API's "message over the size limit" code.
CLOSE_TOO_BIG = 4413
CLOSE_HANDSHAKE_TIMEOUT_S = 5
# How long a stopping server waits for its pages' sockets to close after their
# visits ended, before it drops them.
PAGES_TOLD_S = 3
# Codes a server may put in a close frame (RFC 6455 section 7.4).
_SERVER_CODES = {1000, 1001, 1011, 1012, 1013}


class SendFlow:
    """One WebSocket's write side, as the application needs to see it.

    `paused` is true while the connection holds more than Twisted's buffer
    size (64 KiB) that the browser has not taken; `resumed()` waits until it
    has taken all of it. The producer Twisted already had for the connection
    (Daphne's HTTP channel, which stops reading the socket while it cannot
    send) keeps getting the same calls.
    """

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.closed = False

    @property
    def paused(self) -> bool:
        return not self._writable.is_set()

    async def resumed(self, *, timeout_s: float) -> bool:
        """True once the browser has read what waits for it; False after timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._writable.wait()
        except TimeoutError:
            return False
        return True

    def _pause(self) -> None:
        self._writable.clear()

    def _resume(self) -> None:
        self._writable.set()

    def _stop(self) -> None:
        self.closed = True
        self._writable.set()


@implementer(IPushProducer)
class _FlowProducer:
    """Registered with the connection's transport in place of its producer, which it wraps."""

    def __init__(self, flow: SendFlow, inner: Any) -> None:
        self.flow, self.inner = flow, inner

    def pauseProducing(self) -> None:
        self.flow._pause()
        if self.inner is not None:
            self.inner.pauseProducing()

    def resumeProducing(self) -> None:
        self.flow._resume()
        if self.inner is not None:
            self.inner.resumeProducing()

    def stopProducing(self) -> None:
        self.flow._stop()
        if self.inner is not None:
            self.inner.stopProducing()


def send_flow_attach(transport: Any) -> SendFlow | None:
    """A SendFlow for a connection's transport; None where it has no producer slot."""
    if not hasattr(transport, "registerProducer") or not hasattr(transport, "producer"):
        return None
    flow = SendFlow()
    inner, streaming = transport.producer, getattr(transport, "streamingProducer", True)
    if inner is not None:
        if not streaming:
            return None  # a pull producer would never hear of a full buffer
        transport.unregisterProducer()
    transport.registerProducer(_FlowProducer(flow, inner), True)
    return flow


class PortalWebSocketProtocol(WebSocketProtocol):
    """Daphne's WebSocket protocol, closing the way the application asks."""

    send_flow: SendFlow | None = None

    def handle_reply(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in {"websocket.send", "websocket.close"} and self.state in {
                self.STATE_CLOSING, self.STATE_CLOSED}:
            # The browser went (or the close is under way) while the application was
            # sending: there is nobody to send to, and the application hears of it
            # as websocket.disconnect. autobahn would raise instead, into the
            # application's send.
            return
        if kind == "websocket.close" and self.state == self.STATE_OPEN:
            self.close_with(message.get("code") or 1000, message.get("reason") or "")
            return
        super().handle_reply(message)

    def close_with(self, code: int, reason: str) -> None:
        if code not in _SERVER_CODES and not 3000 <= code <= 4999:
            logger.error("the application asked to close with code %s; sending 1011", code)
            code = 1011
        self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason, 123) if reason else None)

    def _max_message_size_exceeded(self, msg_size: int, max_msg_size: int, reason: str) -> None:
        # autobahn's hook for a browser message over its limit; its default drops
        # TCP without a close frame, which a page cannot tell from a lost network.
        logger.info("WebSocket %s: %s", self.client_addr, reason)
        self.failedByMe = True
        self.close_with(CLOSE_TOO_BIG, f"A message of {msg_size} bytes is over the limit "
                                       f"of {max_msg_size} bytes.")


class PortalWebRequest(WebRequest):
    """Daphne's HTTP request, refusing a body over its limit before reading it."""

    _refused = False
    _body_bytes = 0
    _body_limit: int | None = None

    def gotLength(self, length: int | None) -> None:
        # The request line is parsed by now; Twisted gives the request its path only
        # once the body has arrived, so it is read from the channel.
        path = getattr(self.channel, "_path", b"/")
        self._body_limit = body_limit(path.split(b"?", 1)[0])
        if length is not None and length > self._body_limit:
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_limit is not None and self._body_bytes > self._body_limit:
            self._refuse(self._body_bytes)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refusal(self, length: int, limit: int) -> str:
        """The 413's sentence, in the language the request asks for (no middleware has
        run yet: it is read from the request's headers, as the sockets read theirs)."""
        from django.utils import translation
        from django.utils.translation import gettext

        from portal.language import scope_language

        headers = [(name.lower(), value) for name, values in self.requestHeaders.getAllRawHeaders()
                   for value in values]
        with translation.override(scope_language({"headers": headers})):
            return gettext("The request body (%(size)s bytes) is over this address's limit of "
                           "%(limit)s bytes.") % {"size": length, "limit": limit}

    def _refuse(self, length: int) -> None:
        """Answer 413 at once and hang up, reading nothing more of the body."""
        self._refused = True
        # Twisted would answer "Expect: 100-continue" right after this hook.
        self.requestHeaders.removeHeader(b"expect")
        limit = self._body_limit or 0
        body = json.dumps({"error": "body_too_large", "detail": self._refusal(length, limit)}).encode()
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        transport.pauseProducing()
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()
        logger.warning("refused a %d-byte request body (limit %d)", length, limit)


def body_limit(path: bytes) -> int:
    """The largest request body a path takes: curators' image uploads, a saved visit
    to resume from, visitors' files for their machine, or everything else."""
    from django.conf import settings

    if path.startswith(settings.PORTAL_UPLOAD_PATH_PREFIX.encode()):
        # The upload itself plus its multipart envelope and form fields.
        return int(settings.PORTAL_IMPORT_MAX_BYTES) + 1024 * 1024
    if re.fullmatch(settings.PORTAL_SAVE_PATH_PATTERN.encode(), path):
        # A saved visit to resume from, in its form.
        return max(int(settings.PORTAL_REQUEST_MAX_BYTES),
                   int(settings.PORTAL_SAVE_MAX_BYTES) + int(settings.PORTAL_MEDIA_ENVELOPE_BYTES))
    if re.fullmatch(settings.PORTAL_MEDIA_PATH_PATTERN.encode(), path):
        return max(int(settings.PORTAL_REQUEST_MAX_BYTES),
                   int(settings.PORTAL_MEDIA_MAX_BYTES) + int(settings.PORTAL_MEDIA_ENVELOPE_BYTES))
    return int(settings.PORTAL_REQUEST_MAX_BYTES)


class PortalHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = PortalWebRequest
        return protocol


class PortalServer(Server):
    """Daphne's server with the portal's protocols and the send-flow extension.

    Daphne makes its two factories inside `run()`; the properties below swap
    in the portal's classes as it does.
    """

    _http_factory: HTTPFactory
    _ws_factory: WebSocketFactory
    # Set whenever a connection ends, while the server waits for its pages to go.
    _disconnected: asyncio.Event | None = None

    @property
    def http_factory(self) -> HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        self._http_factory = factory if isinstance(factory, PortalHTTPFactory) else PortalHTTPFactory(self)

    @property
    def ws_factory(self) -> WebSocketFactory:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: WebSocketFactory) -> None:
        factory.protocol = PortalWebSocketProtocol
        # A browser that was slow rather than gone gets a few seconds to read up to
        # the close frame (and its code) before the connection is dropped.
        factory.setProtocolOptions(closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT_S)
        self._ws_factory = factory

    def kill_all_applications(self) -> Deferred[None]:
        """On the way down, the visits end first, so that every page hears why
        (`ended`, reason `server`) before Daphne cancels the applications."""
        return Deferred.fromFuture(asyncio.ensure_future(self._visits_end_then_applications()))

    async def _visits_end_then_applications(self) -> None:
        if await runtime_shutdown():
            # The pages' sockets close (4410) once each has been told; a page that
            # does not read is not waited for past PAGES_TOLD_S.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PAGES_TOLD_S):
                    while any(isinstance(protocol, WebSocketProtocol) and "disconnected" not in details
                              for protocol, details in self.connections.items()):
                        self._disconnected = asyncio.Event()
                        await self._disconnected.wait()
        await super().kill_all_applications().asFuture(asyncio.get_running_loop())

    def protocol_disconnected(self, protocol: Any) -> None:
        super().protocol_disconnected(protocol)
        if self._disconnected is not None:
            self._disconnected.set()

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if scope.get("type") == "websocket" and isinstance(protocol, PortalWebSocketProtocol):
            if protocol.send_flow is None:
                protocol.send_flow = send_flow_attach(protocol.transport)
            if protocol.send_flow is not None:
                scope["extensions"] = {**scope.get("extensions", {}),
                                       SEND_FLOW_EXTENSION: protocol.send_flow}
        return super().create_application(protocol, scope)


def node_address(host: str | None, port: int | None) -> str:
    """Where other nodes on this host reach a server bound to host and port (with
    Daphne's defaults for what is not given).

    A wildcard bind is reached on the loopback address: the host's own name is not
    guessed; nodes on several hosts set PORTAL_NODE_ADDRESS themselves.
    """
    host, port = (host or DEFAULT_HOST).strip("[]"), DEFAULT_PORT if port is None else port
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class PortalCommandLine(CommandLineInterface):
    server_class = PortalServer

    def run(self, args: Sequence[str]) -> None:
        # Settings read the environment when they are imported, which Daphne does
        # when it loads the application, right after parsing these same arguments.
        if not os.environ.get("PORTAL_NODE_ADDRESS"):
            parsed = self.parser.parse_args(args)
            if not (parsed.unix_socket or parsed.file_descriptor is not None or parsed.socket_strings):
                os.environ["PORTAL_NODE_ADDRESS"] = node_address(parsed.host, parsed.port)
        super().run(args)


def main() -> None:
    PortalCommandLine.entrypoint()


if __name__ == "__main__":
    main()
