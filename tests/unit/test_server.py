"""The portal's server: where the other nodes reach it when PORTAL_NODE_ADDRESS is unset."""
from __future__ import annotations

import pytest

from portal.server import body_limit, node_address


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


def test_it_takes_a_floppys_worth_of_files_for_a_machine_and_no_more(settings: object) -> None:
    floppy = 1457664 + 64 * 1024
    assert body_limit(b"/api/sessions/AbC_-12/media") == floppy
    assert body_limit(b"/api/sessions/AbC_-12/media/more") == 1024 * 1024
    assert body_limit(b"/api/sessions/AbC_-12/checkpoints") == 1024 * 1024
    assert body_limit(b"/admin/portal/diskimage/upload/") > floppy
