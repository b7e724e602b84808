"""The portal's server: where the other nodes reach it when PORTAL_NODE_ADDRESS is unset."""
from __future__ import annotations

import pytest

from portal.server import PortalWebSocketProtocol, node_address


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


@pytest.mark.parametrize("state", ["STATE_CLOSING", "STATE_CLOSED"])
def test_it_drops_what_an_application_sends_after_the_browser_closed(state: str) -> None:
    protocol = PortalWebSocketProtocol.__new__(PortalWebSocketProtocol)
    protocol.state = getattr(PortalWebSocketProtocol, state)
    sent: list[bytes] = []
    protocol.sendMessage = lambda payload, binary=False: sent.append(payload)  # type: ignore[method-assign]
    protocol.handle_reply({"type": "websocket.send", "bytes": b"late"})
    assert sent == []
