"""One node on the production services against the plain portal: what PostgreSQL,
Redis and nginx in front cost a visitor.

Two portals in the same run, each serving the prepared demo under the portal's
Daphne: the plain one as `make run` serves it (SQLite, in-memory channel layer,
visitors straight to Daphne; the reference), and a node as `make cluster NODES=1`
runs it (PostgreSQL and Redis started privately by deploy/services.py, Daphne
with --proxy-headers, nginx with deploy/nginx/portal.conf in front). The same
client code talks HTTP and WebSocket to both; the two are measured in turns.

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
import os
import shutil
import tempfile
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
from deploy.services import Nginx, PostgreSQL, Redis, port_free
from tests.support.portal_http import PortalVisitor
from tests.support.rfb import RfbClient
from tests.support.websocket import WebSocketTransport

RUNS = runs(10, 3)
TURNS = runs(3, 1)
ROUND_TRIPS = {"stand-in": runs(300, 50), "qemu": runs(30, 10)}
PLAIN, NODE = "plain portal (SQLite, in memory, Daphne)", "node (PostgreSQL, Redis, nginx)"
# The broker counts viewers on its own WebSocket only; the stand-in is not one.
ENVIRONMENT = {"PORTAL_GRACE_S": "3600", "PORTAL_STARTS_PER_ADDRESS": "1000"}


@contextlib.contextmanager
def node_behind_nginx() -> Iterator[tuple[ServedPortal, str]]:
    """A node on private PostgreSQL and Redis, nginx in front; all stopped afterwards."""
    root = Path(tempfile.mkdtemp(prefix="pbs-", dir="/tmp"))
    os.chmod(root, 0o711)
    postgresql = PostgreSQL(name="postgresql", directory=root / "postgresql", port=port_free())
    redis = Redis(name="redis", directory=root / "redis", port=port_free())
    nginx: Nginx | None = None
    try:
        postgresql.start()
        redis.start()
        with served_portal(environment={**ENVIRONMENT, "PORTAL_DATABASE_URL": postgresql.url,
                                        "PORTAL_REDIS_URL": redis.url}, proxy_headers=True) as node:
            nginx = Nginx(name="nginx", directory=root / "nginx", port=port_free(),
                          nodes=[node.url.removeprefix("http://")])
            nginx.start()
            yield node, nginx.url
    finally:
        for service in (nginx, redis, postgresql):
            if service is not None:
                service.stop()
        shutil.rmtree(root, ignore_errors=True)


def display_opener(url: str, visitor: PortalVisitor, path: str) -> Callable[[], Awaitable[Any]]:
    return lambda: WebSocketTransport.open(
        url.replace("http://", "ws://") + path, subprotocols=["binary"],
        headers={"Cookie": visitor.cookie_header(), "Origin": url})


async def start_to_first_frame(url: str) -> float:
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
    return elapsed


def measure(paths: dict[str, tuple[ServedPortal, str]]) -> dict[str, Any]:
    first_frame: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(RUNS):
        for name, (_, url) in paths.items():
            first_frame[name].append(asyncio.run(start_to_first_frame(url)))
    trips: dict[str, dict[str, list[float]]] = {"stand-in": {}, "qemu": {}}
    visits = {}
    for name, (_, url) in paths.items():
        visitor = PortalVisitor(url)
        visits[name] = (visitor, visitor.session_start("demo"))
    try:
        for _ in range(TURNS):
            for name, (portal, url) in paths.items():
                visitor, session = visits[name]
                opener = display_opener(url, visitor, session["vnc_path"])
                with standin_at(Path(portal.run_dir) / session["id"] / "vnc.sock"):
                    trips["stand-in"].setdefault(name, []).extend(
                        asyncio.run(round_trips(opener, ROUND_TRIPS["stand-in"])))
                trips["qemu"].setdefault(name, []).extend(
                    asyncio.run(round_trips(opener, ROUND_TRIPS["qemu"])))
    finally:
        for visitor, session in visits.values():
            visitor.session_end(session["id"])
    return {"first_frame_s": first_frame, "round_trip_s": trips}


def report(measured: dict[str, Any]) -> list[Table]:
    first = Table("Start to first frame, prepared demo (POST to the first framebuffer update on "
                  f"the display WebSocket; {RUNS} runs each)",
                  ["path", "median", "p95", "median vs plain"])
    reference = median(measured["first_frame_s"][PLAIN])
    for name, values in measured["first_frame_s"].items():
        first.row(name, ms(median(values)), ms(p95(values)), ratio(median(values), reference))
    trip = Table("Display round trip (a 16x16 update, request to end of update)",
                 ["server", "path", "round trips", "median", "p95", "median vs plain"])
    for server, by_path in measured["round_trip_s"].items():
        reference = median(by_path[PLAIN])
        for name, values in by_path.items():
            trip.row(server, name, len(values), us(median(values)), us(p95(values)),
                     ratio(median(values), reference))
    return [first, trip]


def main() -> None:
    with served_portal(environment=ENVIRONMENT) as plain, node_behind_nginx() as (node, edge):
        measured = measure({PLAIN: (plain, plain.url), NODE: (node, edge)})
    tables = report(measured)
    for table in tables:
        table.print()
    write_results("services", {"quick": QUICK, "measured": measured}, tables=tables)


if __name__ == "__main__":
    main()
