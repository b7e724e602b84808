"""The portal's server: where the other nodes reach it when PORTAL_NODE_ADDRESS is unset."""
from __future__ import annotations

import pytest

from portal.server import PortalWebSocketProtocol, body_limit, node_address


@pytest.mark.parametrize(("host", "port", "address"), [
    ("127.0.0.1", 8001, "127.0.0.1:8001"),
    ("10.0.0.11", 8001, "10.0.0.11:8001"),
    # A wildcard bind is reached on this host's loopback address (one host; several
    # hosts set PORTAL_NODE_ADDRESS).
    ("0.0.0.0", 8000, "127.0.0.1:8000"),
    ("::", 8000, "[::1]:8000"),
    ("::1", 8002, "[::1]:8002"),
    ("[::1]", 8002, "[::1]:8002"),
    # Daphne's own defaults for what is not given.
    (None, 9000, "127.0.0.1:9000"),
    ("127.0.0.1", None, "127.0.0.1:8000"),
])
def test_it_names_the_address_other_nodes_reach_it_at(host: str | None, port: int | None,
                                                       address: str) -> None:
    assert node_address(host, port) == address


@pytest.mark.parametrize(("message", "daphne_raises"), [
    ({"type": "websocket.send", "bytes": b"\x00"}, "Attempt to send on a closed protocol"),
    ({"type": "websocket.send", "text": "hello"}, "Attempt to send on a closed protocol"),
    ({"type": "websocket.close", "code": 1011}, "invalid close code 1011"),
])
def test_a_send_or_close_after_the_browser_went_is_dropped_not_raised(
    message: dict[str, object], daphne_raises: str
) -> None:
    """Daphne raises autobahn's errors into the application's send once the browser
    has gone; the portal's server drops them (the application hears websocket.disconnect)."""
    from daphne.ws_protocol import WebSocketProtocol


    for state in ("STATE_CLOSING", "STATE_CLOSED"):
        daphne_own = WebSocketProtocol()
        daphne_own.state, daphne_own.client_addr = getattr(daphne_own, state), ["127.0.0.1", 1]
        with pytest.raises(Exception, match=daphne_raises):
            daphne_own.handle_reply(dict(message))
        portal_own = PortalWebSocketProtocol()
        portal_own.state, portal_own.client_addr = getattr(portal_own, state), ["127.0.0.1", 1]
        portal_own.handle_reply(dict(message))


def test_it_takes_a_floppys_worth_of_files_for_a_machine_and_no_more(settings: object) -> None:
    floppy = 1457664 + 64 * 1024
    assert body_limit(b"/api/sessions/AbC_-12/media") == floppy
    assert body_limit(b"/api/sessions/AbC_-12/media/more") == 1024 * 1024
    assert body_limit(b"/api/sessions/AbC_-12/checkpoints") == 1024 * 1024
    assert body_limit(b"/admin/portal/diskimage/upload/") > floppy


def test_it_takes_a_saved_visit_on_the_exhibits_sessions_route_only() -> None:
    saved = 64 * 1024 * 1024 + 64 * 1024
    assert body_limit(b"/api/exhibits/dos/sessions") == saved
    assert body_limit(b"/api/exhibits/dos/v/3f2a/sessions") == saved
    assert body_limit(b"/api/exhibits/dos/preview") == 1024 * 1024
    assert body_limit(b"/api/sessions/AbC_-12/save") == 1024 * 1024
    assert body_limit(b"/api/exhibits/dos/sessions/more") == 1024 * 1024
