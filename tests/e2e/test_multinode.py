"""Two nodes of one portal on PostgreSQL and Redis, with nginx in front.

Each node is an install of its own (its data directory, identity, machines);
they share the database, Redis, the image store and the key that signs
visitors' cookies, as `make cluster` runs them. Visitors go through nginx,
which spreads requests over the nodes with no affinity, or (to pin down which
node took a start) straight to one node.
"""
from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deploy.services import Nginx, PostgreSQL, Redis
from sessions.machines.machine import process_alive
from tests.e2e.conftest import NginxFactory, Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until

Cluster = tuple[Portal, Portal, Nginx]
ClusterFactory = Callable[..., Cluster]


@pytest.fixture
def cluster_make(postgresql: PostgreSQL, redis: Redis, portal_make: PortalFactory,
                 nginx_make: NginxFactory) -> Iterator[ClusterFactory]:
    shared = Path(tempfile.mkdtemp(prefix="pm-", dir="/tmp"))

    def make(settings: dict[str, str]) -> Cluster:
        common = {
            "PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url,
            "PORTAL_IMAGE_DIR": str(shared / "images"),
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "PORTAL_NODE_HEARTBEAT_S": "0.5", "PORTAL_NODE_DEAD_S": "3",
            "PORTAL_GRACE_S": "600", "PORTAL_LIVE_PER_ADDRESS": "20", **settings,
        }
        first = portal_make(common, proxy_headers=True)
        second = portal_make(common, proxy_headers=True, demo=False)
        edge = nginx_make(first, second)
        front = PortalVisitor(edge.url)
        wait_until(lambda: sum(node["alive"] for node in front.request("GET", "/healthz")[1]["nodes"])
                   == 2, timeout_s=30, what="both nodes alive")
        return first, second, edge

    try:
        yield make
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def node_name(site: Portal) -> str:
    return str(PortalVisitor(site.url).request("GET", "/healthz")[1]["node"])


def state_of(visitor: PortalVisitor, session: dict[str, Any]) -> dict[str, Any]:
    status, now = visitor.request("GET", f"/api/sessions/{session['id']}")
    assert status == 200, now
    return dict(now)


def start(visitor: PortalVisitor) -> dict[str, Any]:
    status, session = visitor.request("POST", "/api/exhibits/demo/sessions")
    assert status == 201, session
    return dict(session)


async def display_shows_the_desktop(visitor: PortalVisitor, session: dict[str, Any]) -> None:
    rfb = await visitor.display(session["vnc_path"])
    try:
        assert rfb.lit_pixels() > 10000, "the demo's desktop"
    finally:
        await rfb.close()


def test_visits_spread_over_nodes_and_wait_in_one_line_with_one_set_of_limits(
    cluster_make: ClusterFactory, redis: Redis
) -> None:
    first, second, edge = cluster_make({
        "PORTAL_MAX_SESSIONS": "1", "PORTAL_QUEUE_MAX": "5", "PORTAL_STARTS_PER_ADDRESS": "6"})
    names = {node_name(first): first, node_name(second): second}

    # Spread: one node's only place is taken, so the next visit goes to the other.
    v1, v2 = PortalVisitor(edge.url), PortalVisitor(edge.url)
    s1, s2 = v1.session_start("demo"), v2.session_start("demo")
    assert {s1["node"], s2["node"]} == set(names)

    # One line: whichever node took the start, the places count in one line.
    v3, v4 = PortalVisitor(first.url), PortalVisitor(second.url)
    s3, s4 = start(v3), start(v4)
    assert (s3["state"], s3["queue_position"]) == ("queued", 1)
    assert (s4["state"], s4["queue_position"]) == ("queued", 2)
    v3.base_url = v4.base_url = edge.url

    # Starts are limited per address across nodes: six from this address
    # is the limit, whichever node the seventh asks. (Redis keeps no data: its
    # restart below forgets the window.)
    v5, v6 = PortalVisitor(first.url), PortalVisitor(second.url)
    s5, s6 = start(v5), start(v6)
    for site in (first, second):
        status, refused = PortalVisitor(site.url).request("POST", "/api/exhibits/demo/sessions")
        assert status == 429, refused
        assert refused["error"] == "rate_limited", refused

    # Every display works through the front, whichever node runs it.
    async def both_displays() -> None:
        await display_shows_the_desktop(v1, s1)
        await display_shows_the_desktop(v2, s2)

    asyncio.run(both_displays())

    # Redis restarts: no visit ends, and the nodes still hand the line on.
    redis.stop()
    redis.start()
    assert state_of(v1, s1)["state"] == state_of(v2, s2)["state"] == "running"

    # The place freed on the second node goes to the first in line, who waited
    # on the first node: the machine starts on the second.
    on_second = (v1, s1) if s1["node"] == node_name(second) else (v2, s2)
    assert on_second[0].session_end(on_second[1]["id"]) == 204
    wait_until(lambda: state_of(v3, s3)["state"] == "running", timeout_s=60,
               what="the first in line to get the freed machine")
    assert state_of(v3, s3)["node"] == node_name(second)
    assert state_of(v4, s4)["queue_position"] == 1
    asyncio.run(display_shows_the_desktop(v3, s3))

    # A visit saved on one node goes on on the other: the save through the front
    # (relayed to the node that holds it), the file brought back to the second node.
    for visitor, session in ((v4, s4), (v5, s5), (v6, s6), (v1, s1), (v2, s2), (v3, s3)):
        visitor.session_end(session["id"])
    saver = PortalVisitor(first.url)
    saved = saver.session_start("demo")
    assert saved["node"] == node_name(first)
    saver.base_url = edge.url
    status, visit_file = saver.request("POST", f"/api/sessions/{saved['id']}/save")
    assert status == 200, visit_file
    assert saver.session_end(saved["id"]) == 204
    saver.base_url = second.url
    status, resumed = saver.request_file("POST", "/api/exhibits/demo/sessions", "visit", visit_file)
    assert status == 201, resumed
    assert resumed["node"] == node_name(second)
    saver.base_url = edge.url
    wait_until(lambda: state_of(saver, resumed)["state"] == "running", timeout_s=60,
               what="the saved visit to run on the second node")
    asyncio.run(display_shows_the_desktop(saver, resumed))

    for site in (first, second):
        assert "Exception inside application" not in (site.root / "daphne.log").read_text()


def test_a_killed_nodes_visits_end_and_new_machines_start_on_a_live_node(
    cluster_make: ClusterFactory,
) -> None:
    first, second, edge = cluster_make({"PORTAL_MAX_SESSIONS": "2"})
    survivor, doomed = node_name(first), node_name(second)
    # Straight to each node, so each visit is on the node it asked.
    kept_visitor, lost_visitor = PortalVisitor(first.url), PortalVisitor(second.url)
    kept = kept_visitor.session_start("demo")
    lost = lost_visitor.session_start("demo")
    assert (kept["node"], lost["node"]) == (survivor, doomed)
    kept_visitor.base_url = lost_visitor.base_url = edge.url
    machine, _ = second.machine(lost["id"])
    # The visit's machine and the warm pool's: all the node's, to end once it is back.
    leftovers = processes_naming(second.run_dir)

    second.crash()
    killed = time.monotonic()
    wait_until(lambda: lost_visitor.session_state(lost["id"]) == "ended", timeout_s=15,
               what="the killed node's visit to end")
    assert time.monotonic() - killed <= 15
    ended = state_of(lost_visitor, lost)
    assert ended["ended_reason"] == "server"
    assert "stopped" in ended["detail"]
    assert state_of(kept_visitor, kept)["state"] == "running"

    # The page offers a new machine: it starts on the live node, and shows.
    again = lost_visitor.session_start("demo")
    assert again["node"] == survivor
    asyncio.run(display_shows_the_desktop(lost_visitor, again))
    health = PortalVisitor(edge.url).request("GET", "/healthz")[1]
    assert [node["name"] for node in health["nodes"]] == [survivor]

    # Back, the node ends its own leftover machine (nobody else touched it).
    assert process_alive(machine), "a machine of the killed node was ended by another node"
    second.serve()
    assert machine in leftovers
    wait_until(lambda: not any(map(process_alive, leftovers)), timeout_s=30,
               what="the node back to end its own leftover machines")
