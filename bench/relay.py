"""What the hop through another node costs: a visit's requests straight to the node
that holds it against the same requests piped there by another node (portal.relay).

Two nodes of one portal on this host, each the portal's Daphne as `make run`
serves it, sharing one database (SQLite), image store and secret key: the holder
(A, which runs the prepared demo) and another node (B). The same visitor (one
cookie jar) reaches the same visit two ways, measured in turns: direct (A takes
the request, as when nginx happens to pick the holder; the reference) and
relayed (B takes it and pipes it to A).

- Display round trip: a non-incremental request for a 16x16 region to the end of
  its update (bench/display_path.py's measure), against the stand-in RFB server
  (bench/rfb_standin.py) in QEMU's place, which answers at once so that only the
  path's cost is left, and against QEMU's own VNC server (what a visitor gets;
  QEMU answers on its refresh timer).
- Display throughput: full-screen Raw updates (1.2 MB each) asked for again and
  again for a window; with the CPU seconds per GB of the node that took the
  socket (for the relayed path, the relaying node: what the hop adds there; the
  holder's own share is the direct row's).
- Session JSON: `GET /api/sessions/<id>` over a kept-alive connection.
"""
from __future__ import annotations

import asyncio
import contextlib
import http.client
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from bench.common import (
    QUICK,
    ServedPortal,
    Table,
    median,
    p95,
    ratio,
    runs,
    served_portal,
    us,
    write_results,
)
from bench.display_path import SMALL, WINDOW_S, measure, standin_at
from deploy import teardown
from tests.support.portal_http import PortalVisitor
from tests.support.websocket import WebSocketTransport

DIRECT, RELAYED = "direct (the holder takes it)", "relayed (another node pipes it to the holder)"
REQUESTS = runs(500, 100)
# The broker counts viewers on its own WebSocket only; the stand-in is not one.
ENVIRONMENT = {"PORTAL_GRACE_S": "3600", "PORTAL_STARTS_PER_ADDRESS": "1000"}


@contextlib.contextmanager
def two_nodes() -> Iterator[tuple[ServedPortal, ServedPortal]]:
    """The holder (with the prepared demo) and another node, on one database; stopped afterwards."""
    with teardown.Stops() as stops:
        shared = stops.directory("pbr-")
        environment = {**ENVIRONMENT, "PORTAL_DATABASE_PATH": str(shared / "portal.sqlite3"),
                       "PORTAL_IMAGE_DIR": str(shared / "images"),
                       "DJANGO_SECRET_KEY": secrets.token_urlsafe(50)}
        holder = stops.enter_context(served_portal(environment=environment))
        other = stops.enter_context(served_portal(environment=environment, demo=False))
        yield holder, other


def display_opener(url: str, visitor: PortalVisitor, path: str) -> Callable[[], Awaitable[Any]]:
    return lambda: WebSocketTransport.open(
        url.replace("http://", "ws://") + path, subprotocols=["binary"],
        headers={"Cookie": visitor.cookie_header(), "Origin": url})


def session_gets(url: str, visitor: PortalVisitor, path: str, count: int) -> list[float]:
    """Times of count GETs of path, one after another on one kept-alive connection."""
    host = url.removeprefix("http://")
    connection = http.client.HTTPConnection(host, timeout=30)
    headers = {"Cookie": visitor.cookie_header(), "Accept": "application/json"}
    times = []
    try:
        for _ in range(count):
            began = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            times.append(time.perf_counter() - began)
            assert response.status == 200, response.status
    finally:
        connection.close()
    return times


def report(measured: dict[str, Any]) -> list[Table]:
    tables = []
    trip = Table(f"Display round trip (a {SMALL}x{SMALL} update, request to end of update); "
                 "reference: direct",
                 ["server", "path", "round trips", "median", "p95", "added by the hop (median)",
                  "median vs direct"])
    for server, by_path in measured["display"].items():
        trips = by_path["round_trip_s"]
        reference = median(trips[DIRECT])
        for name, values in trips.items():
            trip.row(server, name, len(values), us(median(values)), us(p95(values)),
                     us(median(values) - reference) if name != DIRECT else "-",
                     ratio(median(values), reference))
    tables.append(trip)
    rate = Table(f"Display throughput (full-screen Raw updates, 1.2 MB each, {WINDOW_S:g} s windows, "
                 "median of the turns); reference: direct",
                 ["server", "path", "MB/s", "vs direct", "CPU s per GB, node that took the socket"])
    for server, by_path in measured["display"].items():
        rates = {name: median(values) for name, values in by_path["bytes_per_second"].items()}
        for name, value in rates.items():
            cpu = median(by_path["proxy_cpu_s_per_gb"][name])
            rate.row(server, name, f"{value / 1e6:.0f}", ratio(value, rates[DIRECT]),
                     f"{cpu:.2f}" if server == "stand-in" else "(QEMU's share in it)")
    tables.append(rate)
    gets = Table(f"GET /api/sessions/<id> on a kept-alive connection ({REQUESTS} requests a path); "
                 "reference: direct", ["path", "median", "p95", "added by the hop (median)",
                                       "median vs direct"])
    reference = median(measured["session_get_s"][DIRECT])
    for name, values in measured["session_get_s"].items():
        gets.row(name, us(median(values)), us(p95(values)),
                 us(median(values) - reference) if name != DIRECT else "-",
                 ratio(median(values), reference))
    tables.append(gets)
    return tables


def main() -> None:
    with two_nodes() as (holder, other):
        visitor = PortalVisitor(holder.url)
        session = visitor.session_start("demo")
        # B knows where A is once A's heartbeat carries its address (at its first beat).
        assert PortalVisitor(other.url, cookies=visitor.cookies).request(
            "GET", f"/api/sessions/{session['id']}")[1]["node"] == session["node"]
        try:
            paths = {name: display_opener(portal.url, visitor, session["vnc_path"])
                     for name, portal in ((DIRECT, holder), (RELAYED, other))}
            pids: dict[str, int | None] = {DIRECT: holder.pid, RELAYED: other.pid}
            measured: dict[str, Any] = {"display": {}}
            with standin_at(holder.machine(session["id"])[1] / "vnc.sock"):
                measured["display"]["stand-in"] = asyncio.run(
                    measure(paths, server="stand-in", proxy_pids=pids))
            measured["display"]["qemu"] = asyncio.run(measure(paths, server="qemu", proxy_pids=pids))
            gets: dict[str, list[float]] = {DIRECT: [], RELAYED: []}
            for _ in range(runs(3, 1)):
                for name, portal in ((DIRECT, holder), (RELAYED, other)):
                    gets[name] += session_gets(portal.url, visitor, f"/api/sessions/{session['id']}",
                                               REQUESTS // runs(3, 1))
            measured["session_get_s"] = gets
        finally:
            visitor.session_end(session["id"])
    tables = report(measured)
    for table in tables:
        table.print()
    write_results("relay", {"quick": QUICK, "accelerator": session["accelerator"],
                            "measured": measured}, tables=tables)


if __name__ == "__main__":
    main()
