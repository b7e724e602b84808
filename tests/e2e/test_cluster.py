"""`make cluster` (deploy/cluster.py), run with make as a new user runs it: two nodes
on PostgreSQL and Redis behind nginx, kept running one process at a time, and
stopped as a whole.

One cluster serves the module (preparing the demo takes a while); its last test
stops it. Visitors use the front's public API, each with a cookie jar of its own.
The supervisor's pid files (`DIR/pids/NAME.pid`) say which process to kill.
`make cluster` first sets up what is missing, which `make test` has already done.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from deploy.services import port_free
from sessions.machines.machine import process_alive
from tests.conftest import REPO
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until

SERVING = "Serving the portal on"
STOPPED = "Stopped nginx, the nodes, Redis and PostgreSQL."
NODES = ("node-1", "node-2")
SUPERVISED = ("postgresql", "redis", *NODES, "nginx")
# The dead node's visits end (reason `server`) within this many seconds of its death.
DEAD_VISITS_END_S = 15


@dataclass
class Cluster:
    """One `make cluster` run: make's process, its output, the cluster's directory."""

    root: Path
    port: int
    make: subprocess.Popen[bytes]
    output: Path

    @property
    def directory(self) -> Path:
        return self.root / "c"

    @property
    def tmp(self) -> Path:
        """The run's TMPDIR: empty again once it has stopped."""
        return self.root / "tmp"

    def said(self) -> str:
        return self.output.read_text(errors="replace")

    def front(self) -> PortalVisitor:
        return PortalVisitor(f"http://127.0.0.1:{self.port}")

    def pid(self, name: str) -> int | None:
        """The running process's pid, as the supervisor wrote it."""
        try:
            return int((self.directory / "pids" / f"{name}.pid").read_text())
        except FileNotFoundError:
            return None

    def pid_wait(self, name: str, *, other_than: int | None, timeout_s: float,
                 running: bool = True) -> None:
        """Wait until the supervisor has seen its process other_than end (running=False),
        or has another one running."""
        def changed() -> bool:
            pid = self.pid(name)
            return pid != other_than and (pid is not None or not running)
        wait_until(changed, timeout_s=timeout_s,
                   what=f"{name} started again" if running else f"{name}'s death seen")

    def node_port(self, name: str) -> int:
        found = re.search(rf"{name} on (\d+)", self.said())
        assert found, self.said()
        return int(found[1])

    def node(self, name: str) -> PortalVisitor:
        """The node itself, not through nginx."""
        return PortalVisitor(f"http://127.0.0.1:{self.node_port(name)}")

    def node_name(self, name: str) -> str:
        """The node's name in the portal (its install's), as visits name it."""
        return str(self.node(name).request("GET", "/healthz")[1]["node"])

    def alive(self, through: PortalVisitor | None = None) -> set[str]:
        """The nodes /healthz shows alive (through nginx, unless told otherwise)."""
        try:
            status, health = (through or self.front()).request("GET", "/healthz")
        except OSError:
            return set()
        if status != 200:
            return set()
        return {node["name"] for node in health["nodes"] if node["alive"]}

    def serve(self) -> None:
        """Wait until the supervisor says it serves and both nodes are alive."""
        wait_until(lambda: SERVING in self.said() or self.make.poll() is not None,
                   timeout_s=240, what="make cluster to serve")
        assert self.make.poll() is None, f"make cluster ended:\n{self.said()[-3000:]}"
        self.whole()

    def whole(self) -> None:
        """Wait until every process runs and both nodes are alive (after a test before)."""
        wait_until(lambda: all(self.pid(name) is not None for name in SUPERVISED),
                   timeout_s=60, what="every process running")
        both = {self.node_name(name) for name in NODES}
        try:
            wait_until(lambda: self.alive() == both, timeout_s=30, what="both nodes alive")
        except AssertionError as error:
            logs = "\n".join(f"{name}: ...{self.log_tail(name)}" for name in NODES)
            raise AssertionError(f"{error}: {both}, /healthz: {self.front().request('GET', '/healthz')}"
                                 f"\n{logs}") from None

    def log_tail(self, name: str, size: int = 3000) -> str:
        return (self.directory / name / f"{name}.log").read_text(errors="replace")[-size:]

    def descendants(self) -> set[int]:
        try:
            return {child.pid for child in psutil.Process(self.make.pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            return set()

    def supervisor(self) -> int:
        """The pid of `python -m deploy.cluster` (make's child)."""
        (child,) = psutil.Process(self.make.pid).children()
        assert "deploy.cluster" in child.cmdline(), child.cmdline()
        return int(child.pid)

    def stopped_by(self, stop: Callable[[], None]) -> None:
        """Stop the run with stop(), and see that it left nothing running but its data."""
        before = self.descendants()
        assert before, "the cluster's processes"
        stop()
        assert self.make.wait(timeout=120) in (0, -signal.SIGTERM, -signal.SIGINT), self.said()
        said = self.said()
        # Each stopped on its signal: none had to be killed.
        assert STOPPED in said, said[-3000:]
        assert "Killed" not in said, said[-3000:]
        # The nodes ended their machines themselves.
        assert "machine(s) of" not in said, said[-3000:]
        still = [pid for pid in before if process_alive(pid)]
        assert not still, f"outlived the cluster: {still}"
        assert not processes_naming(self.root), "a process outlived the cluster"
        assert not list(self.tmp.iterdir()), "temporary files outlived the cluster"
        assert not (self.directory / "pids").exists()
        for node in NODES:
            run = self.directory / node / "run"
            assert not run.exists() or not any(run.iterdir()), f"{node}'s machines"
        # The data stays for the next run.
        assert (self.directory / "postgresql" / "data" / "PG_VERSION").exists()


def cluster_start(root: Path, *, port: int, run: int) -> Cluster:
    """`make cluster` on this port and directory, in a process group of its own as a
    terminal runs a command (so a Ctrl-C reaches make and the supervisor alike)."""
    output = root / f"make-{run}.log"
    with output.open("wb") as log:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "cluster", f"PORT={port}", "NODES=2",
             f"CLUSTER_DIR={root / 'c'}"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            # No visit ends for want of its page while a test looks elsewhere.
            env={**os.environ, "TMPDIR": str(root / "tmp"), "PORTAL_GRACE_S": "600"})
    cluster = Cluster(root, port, make, output)
    try:
        cluster.serve()
    except BaseException:
        cluster_end(cluster)
        raise
    return cluster


def cluster_end(cluster: Cluster) -> None:
    """SIGTERM to make if it still runs (make passes it on to the supervisor)."""
    if cluster.make.poll() is None:
        cluster.make.terminate()
        try:
            cluster.make.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.make.pid, signal.SIGKILL)
            cluster.make.wait()


@pytest.fixture(scope="module")
def cluster(demo_image: Path) -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="pc-", dir="/tmp"))
    # Passable by the services' own users (PostgreSQL, Redis), as the cluster's directory is.
    os.chmod(root, 0o711)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    current = cluster_start(root, port=port_free(), run=1)
    yield current
    cluster_end(current)
    left = processes_naming(root)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes outlived the cluster: {left}"


def visit_start(cluster: Cluster) -> tuple[PortalVisitor, dict[str, Any]]:
    """A new visitor (a cookie jar of its own) starts a visit through nginx."""
    visitor = cluster.front()
    return visitor, visitor.session_start("demo")


def state_of(visitor: PortalVisitor, session: dict[str, Any]) -> str:
    """The visit's state, or the front's error code (as `server_error`)."""
    status, answer = visitor.request("GET", f"/api/sessions/{session['id']}")
    return str(answer["state"] if status == 200 else answer["error"])


async def display_answers(visitor: PortalVisitor, session: dict[str, Any], *,
                          tries: int = 1) -> None:
    """The visit's display shows the demo's desktop; in at most `tries` connections."""
    for tried in range(1, tries + 1):
        try:
            rfb = await visitor.display(session["vnc_path"])
        except ConnectionError:
            if tried == tries:
                raise
            continue
        try:
            assert rfb.lit_pixels() > 10000, "the demo's desktop"
        finally:
            await rfb.close()
        return


def test_a_killed_node_is_started_again_while_the_other_serves_on(cluster: Cluster) -> None:
    cluster.whole()
    names = {cluster.node_name(name): name for name in NODES}
    visits: dict[str, list[tuple[PortalVisitor, dict[str, Any]]]] = {name: [] for name in NODES}
    while not all(visits.values()):
        assert sum(map(len, visits.values())) < 6, f"visits all on one node: {visits}"
        visitor, session = visit_start(cluster)
        visits[names[session["node"]]].append((visitor, session))
    # The node with more visits dies, so the new visitor's place is the live node's,
    # the less busy one (placement sees a node alive until its heartbeat is old).
    doomed = max(NODES, key=lambda name: len(visits[name]))
    (survivor,) = set(NODES) - {doomed}
    kept_visitor, kept = visits[survivor][0]
    old_pid = cluster.pid(doomed)
    assert old_pid is not None
    # Its machines outlive it (each runs as a uid of its own when this is root).
    machines = processes_naming(cluster.directory / doomed / "run")
    assert machines, f"{doomed}'s machines"

    os.kill(old_pid, signal.SIGKILL)
    killed = time.monotonic()
    # A new visitor, once the node is gone (a start nginx had already handed to the
    # node as it died gets nginx's 502 "try again in a moment": a POST is not retried).
    cluster.pid_wait(doomed, other_than=old_pid, timeout_s=5, running=False)
    fresh_visitor, fresh = visit_start(cluster)
    assert names[fresh["node"]] == survivor, fresh

    def lost_ended() -> bool:
        return all(visitor.session_state(session["id"]) == "ended"
                   for visitor, session in visits[doomed])

    wait_until(lost_ended, timeout_s=DEAD_VISITS_END_S, what="the dead node's visits to end")
    ended_s = time.monotonic() - killed
    for visitor, session in visits[doomed]:
        assert visitor.request("GET", f"/api/sessions/{session['id']}")[1]["ended_reason"] == "server"
    # The other node's visits ran on throughout, and their displays answer.
    for visitor, session in (*visits[survivor], (fresh_visitor, fresh)):
        assert visitor.session_state(session["id"]) == "running"
    asyncio.run(display_answers(kept_visitor, kept))
    asyncio.run(display_answers(fresh_visitor, fresh))

    cluster.pid_wait(doomed, other_than=old_pid, timeout_s=60)
    back = re.search(rf"{doomed} is back \(pid \d+\), ([\d.]+) s after it died", cluster.said())
    assert back, cluster.said()
    wait_until(lambda: cluster.alive() == set(names), timeout_s=30, what=f"{doomed} alive again")
    # Back, the node ended its own leftover machines (its start-up sweep).
    wait_until(lambda: not any(map(process_alive, machines)), timeout_s=30,
               what=f"{doomed} to end its leftover machines")
    print(f"{doomed}: its visits ended `server` {ended_s:.1f} s after SIGKILL; "
          f"back (serving) {back[1]} s after it")
    # New visits go to the node that is back: the least busy one.
    again_visitor, again = visit_start(cluster)
    assert names[again["node"]] == doomed, again
    asyncio.run(display_answers(again_visitor, again))
    assert f"{doomed} (pid {old_pid}) died (killed by SIGKILL); starting it again in 2 s" in cluster.said()
    for visitor, session in (*visits[survivor], (fresh_visitor, fresh), (again_visitor, again)):
        assert visitor.session_end(session["id"]) == 204


def test_a_killed_service_is_started_again_and_the_visits_run_on(cluster: Cluster) -> None:
    cluster.whole()
    visitor, session = visit_start(cluster)
    both = {cluster.node_name(name) for name in NODES}
    for service in ("redis", "postgresql", "nginx"):
        old_pid = cluster.pid(service)
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        cluster.pid_wait(service, other_than=old_pid, timeout_s=60)
        wait_until(lambda: cluster.alive() == both, timeout_s=30, what=f"the nodes after {service}")
        assert f"{service} (pid {old_pid}) died (killed by SIGKILL)" in cluster.said()
        # After PostgreSQL's, each database connection a node kept fails once (the portal's,
        # not the supervisor's: a request's JSON 500, as docs/operators.md says; a display
        # opened on the node that does not hold the visit is closed 1011, or 4410 when
        # the relay's look-up failed), and the next one works.
        wait_until(lambda: state_of(visitor, session) == "running", timeout_s=10,
                   what=f"the visit read as running after {service}")
    # What is left of a killed group (nginx's worker, PostgreSQL's backends) went with it.
    assert not re.search(r"Still running .* after SIGKILL", cluster.said())
    asyncio.run(display_answers(visitor, session, tries=8))
    other_visitor, other = visit_start(cluster)
    assert visitor.session_end(session["id"]) == 204
    assert other_visitor.session_end(other["id"]) == 204


def test_a_process_that_keeps_dying_is_given_up_and_the_rest_serve_on(cluster: Cluster) -> None:
    cluster.whole()
    # nginx: it starts again in no time, and the nodes answer without it.
    given_up = re.compile(r"nginx \(pid \d+\) died \(killed by SIGKILL\): it failed 5 times within 60 s")
    deadline = time.monotonic() + 60
    while not given_up.search(cluster.said()):
        assert time.monotonic() < deadline, f"nginx not given up:\n{cluster.said()[-3000:]}"
        pid = cluster.pid("nginx")
        if pid is None:  # dead, and to be started again (or given up)
            wait_until(lambda: cluster.pid("nginx") is not None or given_up.search(cluster.said()),
                       timeout_s=30, what="nginx started again, or given up")
            continue
        os.kill(pid, signal.SIGKILL)
        cluster.pid_wait("nginx", other_than=pid, timeout_s=10, running=False)
    assert "the rest keep running" in cluster.said()
    assert cluster.make.poll() is None
    assert cluster.pid("nginx") is None
    for name in ("postgresql", "redis", *NODES):
        pid = cluster.pid(name)
        assert pid is not None
        assert process_alive(pid), name
    # The nodes serve on: both alive, and a visit starts on one.
    first = cluster.node("node-1")
    both = {cluster.node_name(name) for name in NODES}
    # (Through a database connection a PostgreSQL restart broke, if the test before
    # killed it, the first request answers 500.)
    wait_until(lambda: cluster.alive(first) == both, timeout_s=10, what="both nodes alive")
    session = first.session_start("demo")
    assert first.session_end(session["id"]) == 204


@pytest.mark.timeout(600)
def test_sigterm_ctrl_c_or_sighup_stop_all_it_started(cluster: Cluster) -> None:
    """SIGTERM to make (which passes it on), then on the same directory again: Ctrl-C
    (SIGINT to make's process group, as a terminal sends it), SIGHUP to the supervisor."""
    cluster.stopped_by(cluster.make.terminate)
    again = cluster_start(cluster.root, port=cluster.port, run=2)
    try:
        # Nothing is prepared twice: the database and the demo's start state were kept.
        assert "demo already has a usable start state." in again.said()
        again.stopped_by(lambda: os.killpg(again.make.pid, signal.SIGINT))
        third = cluster_start(cluster.root, port=cluster.port, run=3)
        try:
            third.stopped_by(lambda: os.kill(third.supervisor(), signal.SIGHUP))
        finally:
            cluster_end(third)
    finally:
        cluster_end(again)
