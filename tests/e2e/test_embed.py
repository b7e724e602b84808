"""Exhibits inside other sites' iframes: who may frame which page (the headers,
through Daphne), and a visit started and used inside an iframe in Chromium."""
from __future__ import annotations

import contextlib
import http.server
import re
import socket
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import Portal, PortalFactory
from tests.e2e.test_visit import CANVAS_STATS, NOTEPAD_TEXT, WHOLE
from tests.support.portal_http import PortalVisitor

MUSEUM = "https://museum.example"


def _headers(visitor: PortalVisitor, path: str, *, data: bytes | None = None,
             accept: str = "text/html") -> tuple[int, Any, str]:
    """Status, headers and final URL of a page as a browser asks for it (redirects followed)."""
    request = urllib.request.Request(visitor.base_url + path, data=data, headers={"Accept": accept})
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        request.add_header("X-CSRFToken", visitor.cookie("csrftoken") or "")
    with visitor.opener.open(request, timeout=60) as response:
        response.read()
        return response.status, response.headers, response.url


@pytest.fixture
def portal_settings() -> dict[str, str]:
    # Cookies stay SameSite=Lax (not Secure), so this plain-HTTP client keeps them.
    return {"PORTAL_EMBED_ORIGINS": MUSEUM, "PORTAL_EMBED_CROSS_SITE": "off"}


def test_it_lets_only_the_listed_sites_frame_the_embed_page_and_its_machine(
        portal: Portal, portal_make: PortalFactory) -> None:
    visitor = PortalVisitor(portal.url)

    # The embed page: framed by the portal itself and the listed museum, by no one else.
    status, headers, _ = _headers(visitor, "/exhibits/demo/embed")
    assert status == 200
    assert headers["Content-Security-Policy"] == f"frame-ancestors 'self' {MUSEUM}"
    assert "https://elsewhere.example" not in headers["Content-Security-Policy"]
    assert headers["X-Frame-Options"] is None

    # Every other page still refuses any frame.
    for path in ["/", "/exhibits/demo/", "/api/exhibits/demo"]:
        _, headers, _ = _headers(visitor, path)
        assert headers["X-Frame-Options"] == "DENY", path
        assert headers["Content-Security-Policy"] is None, path

    # Start from the embed page's form (no script): the machine's page it leads to
    # is the chrome-less one, and frameable by the same sites.
    csrf = visitor.cookie("csrftoken")
    status, headers, url = _headers(visitor, "/api/exhibits/demo/sessions",
                                    data=f"csrfmiddlewaretoken={csrf}&embed=1".encode())
    assert status == 200
    match = re.fullmatch(re.escape(portal.url) + r"/sessions/([A-Za-z0-9_-]{32})/\?embed=1", url)
    assert match, url
    assert headers["Content-Security-Policy"] == f"frame-ancestors 'self' {MUSEUM}"
    assert headers["X-Frame-Options"] is None
    # The same machine's page asked for without the flag is the portal's own page: never framed.
    _, headers, _ = _headers(visitor, f"/sessions/{match.group(1)}/")
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Content-Security-Policy"] is None
    assert visitor.session_end(match.group(1)) == 204

    # Out of the box no other site may frame anything, and cookies stay SameSite=Lax,
    # which browsers send in a same-site iframe.
    plain = portal_make({}, prepare=False)
    status, headers, _ = _headers(PortalVisitor(plain.url), "/exhibits/demo/embed")
    assert status == 200
    assert headers["Content-Security-Policy"] == "frame-ancestors 'self'"
    assert "SameSite=Lax" in headers["Set-Cookie"]

    # An https site may embed: the cookies become the kind browsers send inside
    # another site's iframe.
    cross = portal_make({"PORTAL_EMBED_ORIGINS": MUSEUM}, prepare=False)
    _, headers, _ = _headers(PortalVisitor(cross.url), "/exhibits/demo/embed")
    cookie = headers["Set-Cookie"]
    assert cookie.startswith("csrftoken=")
    assert "SameSite=None; Partitioned" in cookie
    assert "Secure" in cookie


class _Page(http.server.BaseHTTPRequestHandler):
    """Serves one HTML page: another site's page with the portal's iframe in it."""

    html = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.html)))
        self.end_headers()
        self.wfile.write(self.html)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _site(port: int, html: str) -> Iterator[str]:
    """Another site (http://localhost:port, not the portal's 127.0.0.1) serving html."""
    handler = type("SitePage", (_Page,), {"html": html.encode()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _host_page(portal: Portal) -> str:
    return (f'<!doctype html><title>A museum</title><h1>Our collection</h1>'
            f'<iframe src="{portal.url}/exhibits/demo/embed" width="800" height="640" '
            f'allow="fullscreen; clipboard-read; autoplay" allowfullscreen></iframe>')


def test_it_runs_a_machine_inside_another_sites_iframe(portal_make: PortalFactory, browser: Any) -> None:
    allowed_port, other_port = _free_port(), _free_port()
    # localhost and 127.0.0.1 are different sites to a browser: this is a
    # cross-site embed, with its cookies (Secure counts as met on loopback).
    portal = portal_make({"PORTAL_EMBED_ORIGINS": f"http://localhost:{allowed_port}",
                          "PORTAL_EMBED_CROSS_SITE": "on"})
    with _site(allowed_port, _host_page(portal)) as allowed, _site(other_port, _host_page(portal)) as other:
        page = browser.new_page(viewport={"width": 1024, "height": 800})

        # A site not on the list: the browser refuses to show the portal in its frame.
        with page.expect_console_message(lambda message: "frame-ancestors" in message.text,
                                         timeout=15_000):
            page.goto(other + "/")
        assert page.frame_locator("iframe").locator("#start").count() == 0

        # The listed site: Start inside the frame gives the machine, in the same frame.
        page.goto(allowed + "/")
        frame = page.frame_locator("iframe")
        # The embed page: the exhibit and its Start button, without the portal's header.
        frame.get_by_role("heading", name="Portal demo").wait_for()
        assert frame.locator("header.site").count() == 0
        frame.get_by_role("button", name="Start").click()
        frame.locator('#state[data-state="running"]').wait_for(timeout=30_000)
        machine = next(each for each in page.frames if "/sessions/" in each.url)
        assert re.search(r"/sessions/[A-Za-z0-9_-]{32}/\?embed=1$", machine.url), machine.url
        # Chrome-less: the machine's toolbar, no site header.
        assert machine.locator("header.site").count() == 0
        machine.wait_for_function(
            f"() => {{ const s = ({CANVAS_STATS})({WHOLE}); return s && s.lit > 10000; }}",
            timeout=30_000)
        # A click on the screen inside the frame gives it the keyboard: typing reaches Notepad.
        before = machine.evaluate(CANVAS_STATS, NOTEPAD_TEXT)["hash"]
        machine.locator("#screen canvas").click(position={"x": 5, "y": 5})
        page.keyboard.type("Hi")
        machine.wait_for_function(f"(before) => ({CANVAS_STATS})({NOTEPAD_TEXT}).hash !== before",
                                  arg=before, timeout=15_000)
        page.screenshot(path="/tmp/embed-shot-iframe.png")
        machine.get_by_role("button", name="End").click()
        machine.locator('#state[data-state="ended"]').wait_for(timeout=15_000)
        page.close()


def test_it_says_so_when_the_browser_keeps_cookies_from_the_frame(portal_make: PortalFactory,
                                                                   browser: Any) -> None:
    """A cross-site embed without cross-site cookies (here switched off): the frame
    cannot keep a visit, so instead of a Start that would fail, the visitor reads
    why and gets the exhibit in a tab of its own."""
    port = _free_port()
    portal = portal_make({"PORTAL_EMBED_ORIGINS": f"http://localhost:{port}",
                          "PORTAL_EMBED_CROSS_SITE": "off"}, prepare=False)
    with _site(port, _host_page(portal)) as site:
        page = browser.new_page()
        page.goto(site + "/")
        frame = page.frame_locator("iframe")
        message = frame.locator("#message")
        message.wait_for()
        assert "This browser does not let the exhibit run inside this page." in message.inner_text()
        assert frame.get_by_role("button", name="Start").is_disabled()
        link = frame.get_by_role("link", name="Open it in a new tab")
        assert link.get_attribute("target") == "_blank"
        with page.context.expect_page() as opened:
            link.click()
        tab = opened.value
        tab.wait_for_load_state()
        assert tab.url == f"{portal.url}/exhibits/demo/"
        assert tab.get_by_role("button", name="Start").is_enabled()
        page.close()
