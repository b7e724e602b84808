"""Nodes on the production services against the plain portal: what PostgreSQL, Redis,
nginx in front and a second node cost a visitor.

Three set-ups in the same run, each serving the prepared demo under the portal's
Daphne: the plain portal as `make run` serves it (SQLite, in-memory channel layer,
visitors straight to Daphne; the reference); one node as `make cluster NODES=1`
runs it (PostgreSQL and Redis started privately by deploy/services.py, Daphne with
--proxy-headers, nginx with deploy/nginx/portal.conf in front); and two nodes
behind one nginx as `make cluster` runs them (one database, Redis, image store and
secret key). The same client code talks HTTP and WebSocket to all three; they are
measured in turns.

With two nodes nginx hands requests to the nodes in turn, with no affinity: a
display socket lands on the node that holds the visit, or on the other node,
which pipes it to the holder (portal/relay.py). Which one happened is read off
nginx's access log (the node that took the socket) against the Session's `node`
(the holder), and the two kinds are reported apart, each with its count. A start
is held by the node that took the POST (both are empty, and a tie goes to the
asking node), so with this client (POST, then the display at once) nginx's next
turn always puts the display on the other node: the first frames through two
nodes are all relayed, as they are for a page that opens its display first. For
the round trips two sockets are opened one after the other, one on each node.

- Start to first frame: from the POST that creates a session to the first
  framebuffer update on the display WebSocket (what the page does: it opens the
  display at once and the portal answers once the machine runs).
- Display round trip: a non-incremental request for a 16x16 region to the end of
  its update, against QEMU's own VNC server (what a visitor gets; QEMU answers on
  its refresh timer) and against the stand-in RFB server (bench/rfb_standin.py)
  in QEMU's place, which answers at once, so that only the path's cost is left.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK,
    ServedPortal,
    Table,
    median,
    ms,
    p95,
    ratio,
    runs,
    served_portal,
    us,
    write_results,
)
from bench.display_path import round_trips, standin_at
from deploy import teardown
from deploy.services import Nginx, PostgreSQL, Redis, port_free
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

RUNS = runs(10, 2)
TURNS = runs(3, 1)
ROUND_TRIPS = {"stand-in": runs(300, 50), "qemu": runs(30, 10)}
PLAIN = "plain portal (SQLite, in memory, Daphne)"
NODE = "1 node (PostgreSQL, Redis, nginx)"
TWO = "2 nodes behind nginx"
ON_HOLDER = "2 nodes, display on the holder"
RELAYED = "2 nodes, display relayed by the other node"
# The broker counts viewers on its own WebSocket only; the stand-in is not one.
ENVIRONMENT = {"PORTAL_GRACE_S": "3600", "PORTAL_STARTS_PER_ADDRESS": "1000"}


class EdgeLog:
    """nginx's access log (deploy/services.py's format): which node took a request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def upstream(self, request_path: str, *, since: int, timeout_s: float = 5.0) -> str:
        """The node ("host:port") that took the request for request_path logged after
        since. nginx logs a WebSocket once it has closed, so this waits a moment."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.path.open("rb") as log:
                log.seek(since)
                lines = log.read().decode(errors="replace").splitlines()
            for line in lines:
                if f" {request_path} HTTP/" in line and "upstream=" in line:
                    # With a retry on another node, the last one answered.
                    return line.rsplit("upstream=", 1)[1].split(",")[-1].strip()
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx logged no request for {request_path}")
            time.sleep(0.05)


@dataclasses.dataclass
class Cluster:
    """Nodes of one portal behind one nginx, on private PostgreSQL and Redis."""

    nodes: dict[str, ServedPortal]  # by node name (its install identity)
    nginx: Nginx
    postgresql: PostgreSQL
    redis: Redis

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def edge_log(self) -> EdgeLog:
        return EdgeLog(self.nginx.directory / "access.log")

    def holder(self, session: dict[str, Any]) -> ServedPortal:
        return self.nodes[session["node"]]

    def display_side(self, session: dict[str, Any], *, since: int) -> str:
        """Whether the display socket opened since the log's mark went to the visit's
        holder or to the other node (which relayed it)."""
        took = self.edge_log.upstream(session["vnc_path"], since=since)
        return ON_HOLDER if took == self.holder(session).url.removeprefix("http://") else RELAYED


@contextlib.contextmanager
def nodes_behind_nginx(count: int, *, environment: dict[str, str] | None = None,
                       postgresql_settings: dict[str, str] | None = None,
                       prepare: bool = True) -> Iterator[Cluster]:
    """count nodes of one portal (one database, Redis, image store and secret key; the
    first prepares the demo for all, unless not prepare) on private PostgreSQL and
    Redis, nginx in front; all stopped afterwards, also on a stop signal
    (deploy/teardown.py), in reverse order."""
    with teardown.Stops() as stops:
        root = stops.directory("pbs-")
        os.chmod(root, 0o711)
        postgresql = PostgreSQL(name="postgresql", directory=root / "postgresql", port=port_free(),
                                settings=dict(postgresql_settings or {}))
        stops.callback(postgresql.stop)
        postgresql.start()
        redis = Redis(name="redis", directory=root / "redis", port=port_free())
        stops.callback(redis.stop)
        redis.start()
        shared = {**ENVIRONMENT, **(environment or {}),
                  "PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url,
                  "PORTAL_IMAGE_DIR": str(root / "images"),
                  "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
        nodes = [stops.enter_context(served_portal(environment=shared, proxy_headers=True,
                                                   demo=index == 0, prepare=prepare))
                 for index in range(count)]
        nginx = Nginx(name="nginx", directory=root / "nginx", port=port_free(),
                      nodes=[node.url.removeprefix("http://") for node in nodes])
        stops.callback(nginx.stop)
        nginx.start()
        named = {PortalVisitor(node.url).request("GET", "/healthz")[1]["node"]: node
                 for node in nodes}
        deadline = time.monotonic() + 30
        # Every node knows every other's address once each has written a heartbeat.
        while sum(node["alive"] for node in PortalVisitor(nginx.url).request(
                "GET", "/healthz")[1]["nodes"]) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all of {count} nodes alive in time")
            time.sleep(0.2)
        yield Cluster(nodes=named, nginx=nginx, postgresql=postgresql, redis=redis)


def display_opener(url: str, visitor: PortalVisitor, path: str) -> Callable[[], Awaitable[Any]]:
    return lambda: WebSocketTransport.open(
        url.replace("http://", "ws://") + path, subprotocols=["binary"],
        headers={"Cookie": visitor.cookie_header(), "Origin": url})


async def start_to_first_frame(url: str) -> tuple[float, dict[str, Any]]:
    """Seconds from the POST to the display's first update, and the (ended) Session."""
    visitor = PortalVisitor(url)
    await asyncio.to_thread(visitor.request, "GET", "/api/csrf")
    began = time.perf_counter()
    status, session = await asyncio.to_thread(visitor.request, "POST", "/api/exhibits/demo/sessions")
    assert status == 201, session
    rfb = RfbClient(await display_opener(url, visitor, session["vnc_path"])())
    async with asyncio.timeout(60):
        await rfb.handshake()
        await rfb.first_update()
    elapsed = time.perf_counter() - began
    await rfb.close()
    assert await asyncio.to_thread(visitor.session_end, session["id"]) == 204
    return elapsed, session


def measure(plain: ServedPortal, node: Cluster, two: Cluster) -> dict[str, Any]:
    first_frame: dict[str, list[float]] = {PLAIN: [], NODE: [], ON_HOLDER: [], RELAYED: []}
    for _ in range(RUNS):
        first_frame[PLAIN].append(asyncio.run(start_to_first_frame(plain.url))[0])
        first_frame[NODE].append(asyncio.run(start_to_first_frame(node.url))[0])
        since = two.edge_log.mark()
        elapsed, session = asyncio.run(start_to_first_frame(two.url))
        first_frame[two.display_side(session, since=since)].append(elapsed)

    trips: dict[str, dict[str, list[float]]] = {"stand-in": {}, "qemu": {}}
    # Each set-up's visit: its URL, visitor, Session and the node that holds it.
    visits: dict[str, tuple[str, PortalVisitor, dict[str, Any], ServedPortal]] = {}
    for name, url in ((PLAIN, plain.url), (NODE, node.url), (TWO, two.url)):
        visitor = PortalVisitor(url)
        session = visitor.session_start("demo")
        holder = plain if name == PLAIN else (node if name == NODE else two).holder(session)
        visits[name] = (url, visitor, session, holder)
    try:
        for _ in range(TURNS):
            for name, (url, visitor, session, holder) in visits.items():
                opener = display_opener(url, visitor, session["vnc_path"])
                for server in ("stand-in", "qemu"):
                    with (standin_at(holder.machine(session["id"])[1] / "vnc.sock")
                          if server == "stand-in" else contextlib.nullcontext()):
                        # Through two nodes, two sockets: nginx's turns put one on each.
                        for _ in range(2 if name == TWO else 1):
                            since = two.edge_log.mark()
                            values = asyncio.run(round_trips(opener, ROUND_TRIPS[server]))
                            row = two.display_side(session, since=since) if name == TWO else name
                            trips[server].setdefault(row, []).extend(values)
    finally:
        for _, visitor, session, _ in visits.values():
            visitor.session_end(session["id"])
    return {"first_frame_s": first_frame, "round_trip_s": trips}


def report(measured: dict[str, Any]) -> list[Table]:
    first_frames = measured["first_frame_s"]
    first = Table("Start to first frame, prepared demo (POST to the first framebuffer update on "
                  f"the display WebSocket; {RUNS} runs a set-up; with 2 nodes "
                  f"{len(first_frames[RELAYED])} of {RUNS} displays were relayed)",
                  ["path", "runs", "median", "p95", "median vs plain"])
    reference = median(first_frames[PLAIN])
    rows = list(first_frames.items())
    if first_frames[ON_HOLDER] and first_frames[RELAYED]:
        rows.append((f"{TWO}, all", first_frames[ON_HOLDER] + first_frames[RELAYED]))
    for name, values in rows:
        if values:
            first.row(name, len(values), ms(median(values)), ms(p95(values)),
                      ratio(median(values), reference))
    trip = Table("Display round trip (a 16x16 update, request to end of update; "
                 f"{TURNS} turns; through 2 nodes two sockets a turn, one on each node)",
                 ["server", "path", "round trips", "median", "p95", "median vs plain"])
    for server, by_path in measured["round_trip_s"].items():
        reference = median(by_path[PLAIN])
        # QEMU answers on its refresh timer: milliseconds there.
        unit = us if server == "stand-in" else ms
        for name in (PLAIN, NODE, ON_HOLDER, RELAYED):
            values = by_path.get(name, [])
            if values:
                trip.row(server, name, len(values), unit(median(values)), unit(p95(values)),
                         ratio(median(values), reference))
    return [first, trip]


def main() -> None:
    with served_portal(environment=ENVIRONMENT) as plain, nodes_behind_nginx(1) as node, \
            nodes_behind_nginx(2) as two:
        measured = measure(plain, node, two)
    tables = report(measured)
    for table in tables:
        table.print()
    write_results("services", {"quick": QUICK, "measured": measured}, tables=tables)


if __name__ == "__main__":
    main()
