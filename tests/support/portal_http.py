"""A browser's view of a served portal's JSON API, over real HTTP.

Keeps one cookie jar (so one visitor), fetches the CSRF cookie and sends it
back on unsafe methods, and opens WebSockets and displays as its page would. Used by
the end-to-end tests and the benchmarks that talk to a Daphne subprocess.
"""
from __future__ import annotations

import asyncio
import http.client
import http.cookiejar
import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport


class _FromAddress(urllib.request.HTTPHandler):
    """Connects from one loopback address (127.0.0.2, …), so a proxy sees a client of its own."""

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        def connection(host: str, **kwargs: Any) -> http.client.HTTPConnection:
            return http.client.HTTPConnection(host, source_address=(self.address, 0), **kwargs)
        return self.do_open(connection, req)


class PortalVisitor:
    def __init__(self, base_url: str, *, local_address: str | None = None,
                 cookies: http.cookiejar.CookieJar | None = None) -> None:
        """cookies: another visitor's jar, to be the same browser at another address."""
        self.base_url = base_url.rstrip("/")
        self.local_address = local_address
        self.cookies = cookies if cookies is not None else http.cookiejar.CookieJar()
        handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPCookieProcessor(self.cookies)]
        if local_address:
            handlers.append(_FromAddress(local_address))
        self.opener = urllib.request.build_opener(*handlers)
        # Headers sent with every request (a forged X-Forwarded-For, …).
        self.headers: dict[str, str] = {}
        # The headers of the last response (Retry-After, …).
        self.last_headers: dict[str, str] = {}

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.cookies if c.name == name), None)

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.cookies)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        if method != "GET" and self.cookie("csrftoken") is None:
            self.request("GET", "/api/csrf")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        for name, value in self.headers.items():
            request.add_header(name, value)
        token = self.cookie("csrftoken")
        if token:
            request.add_header("X-CSRFToken", token)
        try:
            with self.opener.open(request, timeout=60) as response:
                status, raw = response.status, response.read()
                self.last_headers = dict(response.headers.items())
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
            self.last_headers = dict(error.headers.items())
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw

    def request_file(self, method: str, path: str, field: str, content: bytes,
                     filename: str = "upload.bin") -> tuple[int, Any]:
        """A multipart form with one file, as a page's form sends it."""
        if self.cookie("csrftoken") is None:
            self.request("GET", "/api/csrf")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode() \
            + content + f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
        request.add_header("X-CSRFToken", self.cookie("csrftoken") or "")
        for name, value in self.headers.items():
            request.add_header(name, value)
        try:
            with self.opener.open(request, timeout=60) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        return status, json.loads(raw) if raw else None

    def session_start(self, slug: str, *, timeout_s: float = 60) -> dict[str, Any]:
        """POST a new session and wait until its machine runs; returns the Session JSON."""
        status, session = self.request("POST", f"/api/exhibits/{slug}/sessions")
        if status != 201:
            raise AssertionError(f"session create answered {status}: {session}")
        deadline = time.monotonic() + timeout_s
        while session["state"] != "running":
            if session["state"] == "ended" or time.monotonic() > deadline:
                raise AssertionError(f"session did not run: {session}")
            time.sleep(0.05)
            _, session = self.request("GET", f"/api/sessions/{session['id']}")
        return dict(session)

    def session_state(self, session_id: str) -> str:
        """The session's state, or "unreachable" while the node that holds it is
        killed but not yet known dead (the relay answers 502 node_unreachable)."""
        status, session = self.request("GET", f"/api/sessions/{session_id}")
        if status == 502:
            assert session["error"] == "node_unreachable", session
            return "unreachable"
        assert status == 200, session
        return str(session["state"])

    def session_end(self, session_id: str) -> int:
        status, _ = self.request("DELETE", f"/api/sessions/{session_id}")
        return status

    async def websocket(self, path: str, *, origin: str | None = None) -> WebSocketTransport:
        """A WebSocket to path as this visitor's page opens it: its cookies, its
        address, the site's own Origin (or origin), `binary` offered on a display."""
        return await WebSocketTransport.open(
            self.base_url.replace("http://", "ws://", 1) + path,
            headers={"Cookie": self.cookie_header(), "Origin": origin or self.base_url},
            subprotocols=["binary"] if path.endswith("/vnc") else None,
            local_address=self.local_address,
        )

    async def display(self, path: str, *, timeout_s: float = 30) -> RfbClient:
        """The display at path, handshaken, with its first update in."""
        rfb = RfbClient(await self.websocket(path))
        async with asyncio.timeout(timeout_s):
            await rfb.handshake()
            await rfb.first_update()
        return rfb
