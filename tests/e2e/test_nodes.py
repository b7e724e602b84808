"""Nodes of one portal: a node that dies has its visits ended by the others,
which never touch its machines; back, it cleans up its own leftovers.

Two Daphne nodes on this host share one database (SQLite here; PostgreSQL in a
cluster) and one image store; each is an install of its own (its own data
directory, identity, run directory, leases and reaper).
"""
from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sessions.machines.machine import process_alive
from tests.e2e.conftest import PortalFactory
from tests.e2e.test_installs import orphan
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until


def test_a_dead_nodes_visits_end_with_server_and_only_it_ends_its_machines(
    portal_make: PortalFactory,
) -> None:
    shared = Path(tempfile.mkdtemp(prefix="pn-", dir="/tmp"))
    try:
        two_nodes_one_dies(portal_make, shared)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def two_nodes_one_dies(portal_make: PortalFactory, shared: Path) -> None:
    settings = {
        "PORTAL_DATABASE_PATH": str(shared / "portal.sqlite3"),
        "PORTAL_IMAGE_DIR": str(shared / "images"),
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "PORTAL_NODE_HEARTBEAT_S": "0.5", "PORTAL_NODE_DEAD_S": "3",
        "PORTAL_REAPER_INTERVAL_S": "0.2", "PORTAL_GRACE_S": "600",
    }
    first = portal_make(settings)
    second = portal_make(settings, demo=False)
    here, there = PortalVisitor(first.url), PortalVisitor(second.url)
    kept = here.session_start("demo")
    lost = there.session_start("demo")
    assert kept["node"]
    assert lost["node"]
    assert kept["node"] != lost["node"]

    def nodes_seen() -> list[dict[str, Any]]:
        return list(here.request("GET", "/healthz")[1]["nodes"])

    wait_until(lambda: sorted(n["name"] for n in nodes_seen() if n["alive"])
               == sorted([kept["node"], lost["node"]]), timeout_s=15, what="both nodes alive")
    machine, _ = second.machine(lost["id"])
    # The visit's machine and the warm pool's: all the node's, to end once it is back.
    leftovers = processes_naming(second.run_dir)
    # While both live, neither's reaper takes the other's visit for its own orphan.
    with orphan(first) as (process, _):
        assert process.wait(timeout=30) != 0
    assert there.request("GET", f"/api/sessions/{lost['id']}")[1]["state"] == "running"

    # The second node dies outright; its machine (running as its own uid) outlives it.
    second.crash()
    killed = time.monotonic()
    there.base_url = first.url  # the same browser, now served by a live node

    wait_until(lambda: there.session_state(lost["id"]) == "ended", timeout_s=15,
               what="the dead node's visit to end")
    assert time.monotonic() - killed <= 15
    ended = there.request("GET", f"/api/sessions/{lost['id']}")[1]
    assert ended["ended_reason"] == "server"
    assert "stopped" in ended["detail"]
    assert [n["name"] for n in nodes_seen()] == [kept["node"]]

    # The first node's reaper keeps running and never touches the other's machine.
    with orphan(first) as (process, _):
        assert process.wait(timeout=30) != 0
    assert process_alive(machine), "a machine of the dead node was ended by another node"

    # Back, the node cleans up after itself.
    second.serve()
    assert machine in leftovers
    wait_until(lambda: not any(map(process_alive, leftovers)), timeout_s=30,
               what="the node back to end its own leftover machines")

    # The portal goes on: the visit kept runs, and the visitor who lost theirs starts anew.
    fresh = there.session_start("demo")
    # On the node with the more room: the one back.
    assert fresh["node"] == lost["node"]
    assert here.request("GET", f"/api/sessions/{kept['id']}")[1]["state"] == "running"
    assert there.session_end(fresh["id"]) == 204
    assert here.session_end(kept["id"]) == 204
