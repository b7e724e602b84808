"""What the shared services coordinate: PostgreSQL statements and Redis commands per
visit and per idle node, the time a placement takes, and this host's ceilings for both.

Two nodes of one portal behind nginx, as bench/services.py starts them (private
PostgreSQL with pg_stat_statements loaded, private Redis, the default heartbeat of
PORTAL_NODE_HEARTBEAT_S = 3 s). What the nodes ask of the services is read from the
services' own counters: pg_stat_statements (every statement, BEGIN and COMMIT
included) and pg_stat_database (commits, rollbacks, connections opened) for the
portal's database, pg_stat_wal (WAL flushes: what a write transaction waits for),
Redis's INFO commandstats, and the CPU time of each server's processes
(PostgreSQL's ended backends included). This benchmark reads them over a
connection to another database and leaves its own INFO calls out.

- Idle: both nodes serving nobody for IDLE_S seconds (from START_S after they
  came up, so that each already judges the other's heartbeats); per node and second.
- Visits: VISITS visits one after another, each as the page makes it, through
  nginx: POST, the session page, the events socket (its first state), the display
  socket to its first update, End (DELETE), and the events socket to `ended`.
  Counted from the first visit to SETTLE_S after the last (a backend hands its
  commit and connection counts to the statistics up to a second after it goes
  idle), minus the idle rate over that window, divided by the visits. The starts
  go to each node in turn, and about half of a visit's requests land on the node
  that does not hold it (nginx's turns) and are piped on, as in a real portal. One
  visit on each node before anything is counted: a node's first start also
  connects it to Redis and loads the limiter's script, once in its life.
- Placement: `scheduler.visit_place` called in this process against the same
  PostgreSQL and Redis (as a third node with room, so every start is placed on it,
  the two nodes live), PLACEMENTS times: the whole transaction, the Redis start
  limiter inside it, and PostgreSQL's CPU for it; and CONNECTIONS new database
  connections with their first query (a request opens one), with PostgreSQL's CPU.
- Ceilings, the reference: pgbench on the same PostgreSQL (a database of its own):
  read-only statements (select-only), write transactions (simple-update: BEGIN,
  UPDATE, SELECT, INSERT, END) and new connections (select-only with a connection
  per transaction, as the portal's requests connect); redis-benchmark on the same
  Redis: PUBLISH and the start limiter's script (EVALSHA) on keys of their own;
  each with the server's CPU time per request. Clients and servers share this
  host's cores: a server of its own does more.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK,
    Table,
    median,
    ms,
    p95,
    runs,
    write_results,
)
from bench.services import Cluster, nodes_behind_nginx
from deploy import teardown
from deploy.services import LOOPBACK, PostgreSQL, Redis, postgresql_bin_dir
from tests.support.portal_http import PortalVisitor

START_S = 12.0
IDLE_S = runs(30, 10)
VISITS = runs(20, 3)
SETTLE_S = 3.0
PLACEMENTS = runs(200, 30)
CONNECTIONS = runs(50, 20)
CEILING_S = runs(10, 3)
REDIS_REQUESTS = runs(200_000, 20_000)
STATISTICS = {"shared_preload_libraries": "pg_stat_statements",
              "pg_stat_statements.track_utility": "on"}
# This benchmark's own commands to Redis (its snapshots), left out of the counts.
OWN_REDIS_COMMANDS = {"info"}
# What the start limiter's script calls inside Redis (INFO commandstats counts them
# too); no client sends them itself.
LIMITER_SCRIPT_COMMANDS = {"time", "zremrangebyscore", "zcard", "zrange", "zadd", "expire"}


# --- the services' counters -----------------------------------------------------------


def statistics_connect(postgresql: PostgreSQL) -> Any:
    """A connection to another database than the portal's, so that reading the
    statistics counts nothing against the portal's."""
    import psycopg

    connection = psycopg.connect(host=LOOPBACK, port=postgresql.port, user=postgresql.user,
                                 password=postgresql.password, dbname="postgres", autocommit=True)
    connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    return connection


def counters(statistics: Any, redis_client: Any, database: str, postgresql_pid: int
             ) -> dict[str, Any]:
    """Everything counted so far: statements by text, commits, rollbacks, connections
    opened, WAL flushes, Redis commands by name, and each server's CPU seconds; and
    the connections open to the portal's database now."""
    statements: dict[str, int] = {}
    for query, calls in statistics.execute(
            "SELECT s.query, s.calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = %s", [database]).fetchall():
        statements[query] = statements.get(query, 0) + int(calls)
    commits, rollbacks, sessions = statistics.execute(
        "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
        [database]).fetchone()
    (wal_flushes,) = statistics.execute("SELECT wal_sync FROM pg_stat_wal").fetchone()
    (held,) = statistics.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                                 [database]).fetchone()
    commands = {name.removeprefix("cmdstat_"): int(stats["calls"])
                for name, stats in redis_client.info("commandstats").items()
                if name.removeprefix("cmdstat_") not in OWN_REDIS_COMMANDS}
    redis_cpu = redis_client.info("cpu")
    return {"at": time.monotonic(), "statements": statements, "commits": int(commits),
            "rollbacks": int(rollbacks), "connections": int(sessions),
            "wal_flushes": int(wal_flushes), "postgresql_cpu_s": server_cpu_s(postgresql_pid),
            "connections_held": int(held),
            "redis": commands,
            "redis_cpu_s": float(redis_cpu["used_cpu_user"]) + float(redis_cpu["used_cpu_sys"])}


def server_cpu_s(pid: int) -> float:
    """CPU seconds of a server process and its children: its own and its living
    children's to the nanosecond (/proc schedstat), its ended children's (PostgreSQL's
    backends, one a connection) to the clock tick."""
    def on_cpu_s(process: int | str) -> float:
        with open(f"/proc/{process}/schedstat") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9

    with open(f"/proc/{pid}/stat") as stat:
        ended = stat.read().rsplit(")", 1)[1].split()[13:15]
    total = on_cpu_s(pid) + sum(int(ticks) for ticks in ended) / os.sysconf("SC_CLK_TCK")
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            for child in children.read().split():
                with contextlib.suppress(OSError):
                    total += on_cpu_s(child)
    return total


def counted(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What was counted between two snapshots, over how many seconds."""
    def minus(later: dict[str, int], earlier: dict[str, int]) -> dict[str, int]:
        return {key: value - earlier.get(key, 0) for key, value in later.items()
                if value != earlier.get(key, 0)}

    return {"seconds": after["at"] - before["at"],
            "statements": minus(after["statements"], before["statements"]),
            "redis": minus(after["redis"], before["redis"]),
            **{key: after[key] - before[key] for key in SCALARS}}


SCALARS = ("commits", "rollbacks", "connections", "wal_flushes", "postgresql_cpu_s", "redis_cpu_s")


def statement_kind(query: str) -> str:
    """A short name for a statement: its verb, its first table, and its lock or count."""
    text = " ".join(query.split())
    verb = text.split(" ", 1)[0].upper()
    if verb in {"BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "SHOW"}:
        return verb
    if text.startswith("SELECT set_config("):
        return "SELECT set_config (a new connection's time zone)"
    table = re.search(r'(?:FROM|UPDATE|INTO) (?:ONLY )?(?:"?\w+"?\.)?"?(\w+)"?', text)
    kind = f"{verb} {table[1] if table else '?'}"
    upper = text.upper()
    if "COUNT(" in upper:
        kind += " count"
    for lock in ("FOR UPDATE SKIP LOCKED", "FOR UPDATE", "FOR KEY SHARE"):
        if lock in upper:
            kind += f" {lock}"
            break
    if "FOR KEY SHARE" in upper:
        kind += " (the INSERT's foreign key check)"
    return kind


def per_unit(window: dict[str, Any], idle: dict[str, Any], *, units: float) -> dict[str, Any]:
    """The window's counts minus the idle rate over its length, per unit (a visit)."""
    scale = window["seconds"] / idle["seconds"]

    def each(key: str) -> float:
        return float((window[key] - idle[key] * scale) / units)

    def by_name(key: str) -> dict[str, float]:
        names = set(window[key]) | set(idle[key])
        return {name: (window[key].get(name, 0) - idle[key].get(name, 0) * scale) / units
                for name in names}

    return {"statements": by_name("statements"), "redis": by_name("redis"),
            **{key: each(key) for key in SCALARS}}


def idle_per_node_second(idle: dict[str, Any], *, nodes: int) -> dict[str, Any]:
    units = idle["seconds"] * nodes
    return {"statements": {name: value / units for name, value in idle["statements"].items()},
            "redis": {name: value / units for name, value in idle["redis"].items()},
            **{key: idle[key] / units for key in SCALARS}}


# --- one visit, as the page makes it ----------------------------------------------------


async def visit(url: str) -> dict[str, Any]:
    """One whole visit through nginx; its times and how many events the page got."""
    visitor = PortalVisitor(url)
    await asyncio.to_thread(visitor.request, "GET", "/api/csrf")
    began = time.perf_counter()
    status, session = await asyncio.to_thread(visitor.request, "POST", "/api/exhibits/demo/sessions")
    created = time.perf_counter() - began
    assert status == 201, session
    status, _ = await asyncio.to_thread(visitor.request, "GET", session["page_url"])
    assert status == 200, status
    events = await visitor.websocket(session["events_path"])
    received = [json.loads(await events.receive_text())]
    rfb = await visitor.display(session["vnc_path"])
    first_frame = time.perf_counter() - began
    assert await asyncio.to_thread(visitor.session_end, session["id"]) == 204
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(30):
            while True:
                received.append(json.loads(await events.receive_text()))
    assert any(message["type"] == "ended" for message in received), received
    await rfb.close()
    await events.close()
    return {"create_s": created, "first_frame_s": first_frame, "events": len(received),
            "node": session["node"]}


def visit_alternating(cluster: Cluster, index: int) -> dict[str, Any]:
    """A visit whose start goes to the other node than the last one's: a visit makes an
    even number of requests, so every other one follows one more request through nginx
    (GET /api/csrf, which reads no database)."""
    if index % 2:
        PortalVisitor(cluster.url).request("GET", "/api/csrf")
    return asyncio.run(visit(cluster.url))


# --- placement, in this process ---------------------------------------------------------


class TimedLimiter:
    """The start limiter, with the time of each call kept."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.times: list[float] = []

    def take(self, limits: dict[str, int]) -> float | None:
        began = time.perf_counter()
        try:
            return self.inner.take(limits)  # type: ignore[no-any-return]
        finally:
            self.times.append(time.perf_counter() - began)

    def forget_old(self) -> None:
        self.inner.forget_old()


def placements(cluster: Cluster) -> dict[str, list[float]]:
    """visit_place's transaction, timed PLACEMENTS times as a third node with room
    (each visit ended straight after, outside the timing), and a new connection with
    its first query; each with PostgreSQL's CPU time for it."""
    with teardown.Stops() as stops:
        return _placements_in(cluster, stops.directory("pbc-"))


def _placements_in(cluster: Cluster, data: Path) -> dict[str, list[float]]:
    os.environ.update({"DJANGO_SETTINGS_MODULE": "portal.settings", "PORTAL_DATA_DIR": str(data),
                       "PORTAL_DATABASE_URL": cluster.postgresql.url,
                       "PORTAL_REDIS_URL": cluster.redis.url})
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from portal.models import Exhibit
    from sessions.models import Node, VisitorSession, new_session_id
    from sessions.placement.nodes import node_heartbeat, node_leave
    from sessions.placement.scheduler import RedisStartLimiter, SchedulerConfig, visit_place

    server = cluster.postgresql.pid
    assert server is not None
    name = "bench-placement"
    config = SchedulerConfig(node=name, capacity=1000, queue_max=100, starts_per_browser=10,
                             starts_per_address=10**9)
    redis_limiter = RedisStartLimiter(url=cluster.redis.url, window_s=config.start_window_s)
    limiter = TimedLimiter(redis_limiter)
    exhibit = Exhibit.objects.get(slug="demo").pk
    found: dict[str, list[float]] = {"place_s": [], "place_server_cpu_s": [], "connect_s": [],
                                     "connect_server_cpu_s": []}
    try:
        for _ in range(PLACEMENTS):
            # Alive in the other nodes' eyes, so they never end its visits.
            node_heartbeat(name=name, capacity=config.capacity, sessions=0, accelerator="kvm")
            cpu = server_cpu_s(server)
            began = time.perf_counter()
            session = visit_place(config, limiter, session_id=new_session_id(), exhibit_id=exhibit,
                                  owner=secrets.token_hex(16), address="192.0.2.1",
                                  accelerator="kvm", run_dir=str(data / "run"))
            found["place_s"].append(time.perf_counter() - began)
            found["place_server_cpu_s"].append(server_cpu_s(server) - cpu)
            assert session.node == name, session.node
            VisitorSession.objects.filter(id=session.id).update(
                state=VisitorSession.State.ENDED, ended_reason=VisitorSession.EndedReason.VISITOR,
                ended_at=timezone.now())
        connection.close()
        time.sleep(0.5)
        # An ended backend's CPU reaches the server's count in clock ticks (10 ms):
        # the connections are counted together.
        cpu = server_cpu_s(server)
        for _ in range(CONNECTIONS):
            began = time.perf_counter()
            Node.objects.filter(name=name).exists()
            found["connect_s"].append(time.perf_counter() - began)
            connection.close()
        time.sleep(0.5)
        found["connect_server_cpu_s"] = [(server_cpu_s(server) - cpu) / CONNECTIONS]
        node_leave(name=name)
    finally:
        with teardown.deferred():
            connection.close()
            redis_limiter.close()
    return {**found, "limiter_s": limiter.times}


# --- the ceilings -----------------------------------------------------------------------


def pgbench_ceilings(postgresql: PostgreSQL) -> dict[str, dict[str, float]]:
    """Transactions a second pgbench gets from the same server (a database of its own),
    and the server's CPU seconds per transaction."""
    import psycopg

    assert postgresql.pid is not None
    with psycopg.connect(host=LOOPBACK, port=postgresql.port, user=postgresql.user,
                         password=postgresql.password, dbname="postgres",
                         autocommit=True) as connection:
        connection.execute("CREATE DATABASE pgbench")
    pgbench = str(postgresql_bin_dir() / "pgbench")
    env = {**os.environ, "PGPASSWORD": postgresql.password}
    common = ["-h", LOOPBACK, "-p", str(postgresql.port), "-U", postgresql.user]
    subprocess.run([pgbench, "-i", "-q", "-s", "1", *common, "pgbench"], env=env, check=True,
                   capture_output=True)
    found = {}
    for name, options in (("select_only", ["-S"]), ("simple_update", ["-N"]),
                          ("connect_each", ["-S", "-C"])):
        cpu = server_cpu_s(postgresql.pid)
        result = subprocess.run([pgbench, *options, "-n", "-c", "4", "-j", "2", "-T", str(CEILING_S),
                                 *common, "pgbench"], env=env, check=True, capture_output=True,
                                text=True)
        cpu = server_cpu_s(postgresql.pid) - cpu
        rate = re.search(r"^tps = ([0-9.]+)", result.stdout, re.MULTILINE)
        done = re.search(r"^number of transactions actually processed: ([0-9]+)", result.stdout,
                         re.MULTILINE)
        assert rate, result.stdout
        assert done, result.stdout
        found[name] = {"per_s": float(rate[1]), "server_cpu_s_each": cpu / int(done[1])}
    return found


@contextlib.contextmanager
def redis_bench_user(redis: Redis) -> Iterator[tuple[Any, str]]:
    """A Redis user that may only publish on one channel and run the limiter on keys of
    its own (so its password on redis-benchmark's command line opens nothing else);
    removed afterwards."""
    import redis as redis_py

    client = redis_py.Redis(host=LOOPBACK, port=redis.port, password=redis.password)
    password = secrets.token_urlsafe(16)
    client.acl_setuser("bench", enabled=True, passwords=[f"+{password}"],
                       keys=["portal:bench:*"], channels=["portal.bench"],
                       commands=["+publish", "+evalsha", *(f"+{name}" for name in LIMITER_SCRIPT_COMMANDS)])
    try:
        yield client, password
    finally:
        client.acl_deluser("bench")
        client.close()


def redis_ceilings(redis: Redis) -> dict[str, dict[str, float]]:
    """Requests a second redis-benchmark gets from the same Redis (10 clients), and
    the server's CPU seconds per request."""
    from sessions.placement.scheduler import _REDIS_TAKE

    found = {}
    with redis_bench_user(redis) as (client, password):
        script = client.script_load(_REDIS_TAKE)
        commands = {
            # About a channel-layer message's size (msgpack of a small dict); no subscriber.
            "publish": ["publish", "portal.bench", "x" * 120],
            "evalsha": ["evalsha", script, "2", "portal:bench:b:__rand_int__",
                        "portal:bench:a:__rand_int__", "60", "__rand_int__", "1000000000",
                        "1000000000"],
        }
        for name, command in commands.items():
            before = client.info("cpu")
            result = subprocess.run(
                [shutil.which("redis-benchmark") or "redis-benchmark", "-h", LOOPBACK,
                 "-p", str(redis.port), "--user", "bench", "-a", password, "-c", "10",
                 "-n", str(REDIS_REQUESTS), "-r", "100000", "--csv", *command],
                check=True, capture_output=True, text=True)
            after = client.info("cpu")
            cpu = sum(float(after[key]) - float(before[key]) for key in ("used_cpu_user", "used_cpu_sys"))
            rows = [line.split(",") for line in result.stdout.splitlines() if line.startswith('"')]
            found[name] = {"per_s": float(rows[-1][1].strip('"')),
                           "server_cpu_s_each": cpu / REDIS_REQUESTS}
    return found


# --- the run ----------------------------------------------------------------------------


def measure() -> dict[str, Any]:
    import redis as redis_py

    with nodes_behind_nginx(2, postgresql_settings=STATISTICS) as cluster:
        statistics = statistics_connect(cluster.postgresql)
        redis_client = redis_py.Redis(host=LOOPBACK, port=cluster.redis.port,
                                      password=cluster.redis.password)
        assert cluster.postgresql.pid is not None

        def now() -> dict[str, Any]:
            return counters(statistics, redis_client, cluster.postgresql.database,
                            cluster.postgresql.pid or 0)

        try:
            # Each node takes a start first (what a node does once: its Redis
            # connections, the limiter's script), then is idle as nodes are idle for
            # long: each has judged the other's heartbeats.
            for index in range(2):
                visit_alternating(cluster, index)
            time.sleep(START_S)
            before = now()
            time.sleep(IDLE_S)
            after = now()
            idle = counted(before, after)
            idle_held = after["connections_held"]
            before = now()
            visits = [visit_alternating(cluster, index) for index in range(VISITS)]
            time.sleep(SETTLE_S)
            window = counted(before, now())
            placed = placements(cluster)
            ceilings = {"postgresql": pgbench_ceilings(cluster.postgresql),
                        "redis": redis_ceilings(cluster.redis)}
        finally:
            statistics.close()
            redis_client.close()
    return {"idle": idle, "visits_window": window, "visits": visits, "placement": placed,
            "connections_held_per_idle_node": idle_held / 2,
            "ceilings": ceilings, "per_visit": per_unit(window, idle, units=VISITS),
            "per_idle_node_s": idle_per_node_second(idle, nodes=2)}


def count(value: float) -> str:
    if abs(value) < 0.005:
        return "0"
    return f"{value:.1f}" if abs(value) >= 0.95 else f"{value:.2f}"


def at(ceiling: float, cost: float) -> str:
    """How many visits (or idle nodes) a second a ceiling takes at a cost each."""
    return f"{ceiling / cost:,.0f}" if cost > 0 else "-"


def report(measured: dict[str, Any]) -> list[Table]:
    visit, node = measured["per_visit"], measured["per_idle_node_s"]
    pg, rd = measured["ceilings"]["postgresql"], measured["ceilings"]["redis"]
    sent_visit = {name: value for name, value in visit["redis"].items()
                  if name not in LIMITER_SCRIPT_COMMANDS}
    sent_node = {name: value for name, value in node["redis"].items()
                 if name not in LIMITER_SCRIPT_COMMANDS}
    statements = (sum(visit["statements"].values()), sum(node["statements"].values()))
    transactions = (visit["commits"] + visit["rollbacks"], node["commits"] + node["rollbacks"])
    commands = (sum(sent_visit.values()), sum(sent_node.values()))

    costs = Table(
        f"What PostgreSQL and Redis do for one visit ({VISITS} visits through nginx on 2 nodes, less "
        f"the idle rate over their {measured['visits_window']['seconds']:.0f} s) and for one idle "
        f"node ({IDLE_S} s, 2 nodes, heartbeat every 3 s); reference: this host's ceilings "
        f"(pgbench and redis-benchmark on the same servers, in the same run)",
        ["what", "per visit", "per idle node per second", "reference: ceiling here",
         "visits/s at the ceiling", "idle nodes at the ceiling"])
    costs.row("PostgreSQL statements (BEGIN, COMMIT included)", count(statements[0]),
              count(statements[1]), f"{pg['select_only']['per_s']:,.0f}/s read-only (pgbench -S)",
              at(pg["select_only"]["per_s"], statements[0]), at(pg["select_only"]["per_s"], statements[1]))
    costs.row("PostgreSQL transactions (each statement outside one counts)", count(transactions[0]),
              count(transactions[1]), "", "", "")
    costs.row("PostgreSQL WAL flushes (write transactions wait for one)", count(visit["wal_flushes"]),
              count(node["wal_flushes"]), f"{pg['simple_update']['per_s']:,.0f}/s write transactions "
              "(pgbench -N)", at(pg["simple_update"]["per_s"], visit["wal_flushes"]),
              at(pg["simple_update"]["per_s"], node["wal_flushes"]))
    costs.row("PostgreSQL connections opened", count(visit["connections"]), count(node["connections"]),
              f"{pg['connect_each']['per_s']:,.0f}/s (pgbench -S -C)",
              at(pg["connect_each"]["per_s"], visit["connections"]),
              at(pg["connect_each"]["per_s"], node["connections"]))
    costs.row("PostgreSQL connections held open (idle node, not per second)", "",
              count(measured["connections_held_per_idle_node"]), "100 (max_connections, the default)",
              "", at(100, measured["connections_held_per_idle_node"]))
    costs.row("PostgreSQL CPU (all its processes)", ms3(visit["postgresql_cpu_s"]),
              f"{ms3(node['postgresql_cpu_s'])} (its own background work included)", "1 core",
              at(1.0, visit["postgresql_cpu_s"]), at(1.0, node["postgresql_cpu_s"]))
    costs.row("Redis commands sent", count(commands[0]), count(commands[1]),
              f"{rd['publish']['per_s']:,.0f}/s PUBLISH (redis-benchmark)",
              at(rd["publish"]["per_s"], commands[0]), at(rd["publish"]["per_s"], commands[1]))
    costs.row("Redis CPU", ms3(visit["redis_cpu_s"]),
              f"{ms3(node['redis_cpu_s'])} (its own timer, 10 a second, included)",
              "1 core (Redis has one)", at(1.0, visit["redis_cpu_s"]), "-")

    ceilings = Table("The reference ceilings: this host (2 cores shared by client and server)",
                     ["workload", "per second", "server CPU each"])
    for name, label in (("select_only", "pgbench -S: one SELECT by key a transaction"),
                        ("simple_update", "pgbench -N: BEGIN, UPDATE, SELECT, INSERT, END"),
                        ("connect_each", "pgbench -S -C: a new connection (password) a transaction")):
        ceilings.row(label, f"{pg[name]['per_s']:,.0f}", ms3(pg[name]["server_cpu_s_each"]))
    for name, label in (("publish", "redis-benchmark PUBLISH (120 bytes, no subscriber)"),
                        ("evalsha", "redis-benchmark EVALSHA of the start limiter (2 keys)")):
        ceilings.row(label, f"{rd[name]['per_s']:,.0f}", ms3(rd[name]["server_cpu_s_each"]))

    kinds: dict[str, list[float]] = {}
    for source, index in ((visit["statements"], 0), (node["statements"], 1)):
        for query, value in source.items():
            kinds.setdefault(statement_kind(query), [0.0, 0.0])[index] += value
    by_kind = Table("PostgreSQL statements by kind (verb, first table, lock), largest first",
                    ["statement", "per visit", "per idle node per second"])
    for kind, (per_visit, per_node) in sorted(kinds.items(), key=lambda item: -item[1][0] - 3 * item[1][1]):
        if abs(per_visit) >= 0.1 or per_node >= 0.01:
            by_kind.row(kind, count(per_visit), count(per_node))

    redis = Table("Redis commands by name (INFO commandstats; those inside the limiter's script "
                  "are counted apart)", ["command", "per visit", "per idle node per second"])
    for name in sorted(set(visit["redis"]) | set(node["redis"]),
                       key=lambda name: (name in LIMITER_SCRIPT_COMMANDS, -visit["redis"].get(name, 0))):
        per_visit, per_node = visit["redis"].get(name, 0.0), node["redis"].get(name, 0.0)
        if abs(per_visit) >= 0.1 or per_node >= 0.001:
            label = f"{name} (inside the limiter's script)" if name in LIMITER_SCRIPT_COMMANDS else name
            redis.row(label, count(per_visit), f"{per_node:.3f}")
    events = [each["events"] for each in measured["visits"]]

    placed = measured["placement"]
    times = Table(
        "What a start costs in time (median / p95): placements in this process as a third node "
        f"({PLACEMENTS} runs); visits through nginx ({VISITS}; the page got "
        f"{median(events):.0f} events a visit)",
        ["step", "median", "p95", "PostgreSQL CPU (median)", "starts/s one node can place (1 / median)"])
    place = placed["place_s"]
    times.row("placement transaction (scheduler.visit_place)", ms3(median(place)), ms3(p95(place)),
              ms3(median(placed["place_server_cpu_s"])), f"{1 / median(place):,.0f}")
    times.row("… of which the Redis start limiter (EVALSHA)", ms3(median(placed["limiter_s"])),
              ms3(p95(placed["limiter_s"])), "", "")
    times.row("a request's PostgreSQL connection and its first query (from the node's pool)",
              ms3(median(placed["connect_s"])), ms3(p95(placed["connect_s"])),
              f"{ms3(placed['connect_server_cpu_s'][0])} (mean)", "")
    created = [each["create_s"] for each in measured["visits"]]
    framed = [each["first_frame_s"] for each in measured["visits"]]
    times.row("POST through nginx (201, machine starting)", ms(median(created)), ms(p95(created)),
              "", "")
    times.row("POST to the display's first update", ms(median(framed)), ms(p95(framed)), "", "")
    return [costs, ceilings, by_kind, redis, times]


def ms3(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def main() -> None:
    measured = measure()
    tables = report(measured)
    for table in tables:
        table.print()
    write_results("coordination", {"quick": QUICK, "measured": measured}, tables=tables)


if __name__ == "__main__":
    main()
