"""`make cluster` (deploy/cluster.py): two nodes on PostgreSQL and Redis behind nginx,
started and stopped as a whole.

The tests run what the Makefile runs (`python -m deploy.cluster`), on a free port
and in a private directory, not `make` itself: `make cluster` first sets up what
is missing, which `make test` has already done.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deploy.services import port_free
from sessions.machines.machine import process_alive
from tests.conftest import DEMO_IMAGE, REPO
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until


@pytest.fixture
def cluster_dir(demo_image: Path) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pc-", dir="/tmp"))
    yield root
    left = processes_naming(root)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)
    assert not left, f"processes outlived the cluster: {left}"


def _children(pid: int) -> set[int]:
    """Every living process below pid."""
    try:
        return {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def cluster_argv(port: int, directory: Path, nodes: int) -> list[str]:
    return [sys.executable, "-m", "deploy.cluster", "--port", str(port), "--nodes", str(nodes),
            "--dir", str(directory), "--demo-image", str(DEMO_IMAGE)]


def _serve_until(process: subprocess.Popen[str], marker: str) -> list[str]:
    """Read the cluster's output until marker (or its end); returns the lines."""
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError("the cluster ended before it served:\n" + "".join(lines[-30:]))


def test_it_serves_two_nodes_behind_nginx_and_stops_it_all(cluster_dir: Path) -> None:
    """Twice on one directory: stopped by SIGTERM (a service manager), then by SIGINT (Ctrl-C)."""
    port = port_free()
    for run, how in enumerate((signal.SIGTERM, signal.SIGINT)):
        process = subprocess.Popen(cluster_argv(port, cluster_dir, 2), cwd=REPO, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
        watchdog = threading.Timer(180, process.kill)  # a hung start fails, not hangs
        watchdog.start()
        try:
            _serve_until(process, "Serving the portal on")
            started = _children(process.pid)
            visitor = PortalVisitor(f"http://127.0.0.1:{port}")
            status, health = visitor.request("GET", "/healthz")
            assert status == 200, health
            assert health["ok"], health
            def alive(front: PortalVisitor = visitor) -> int:
                return sum(node["alive"] for node in front.request("GET", "/healthz")[1]["nodes"])

            wait_until(lambda: alive() == 2, timeout_s=30, what="both nodes in the database")
            # The second run finds the first run's database: the exhibit is still published.
            # Two visitors get machines on the two nodes.
            session = visitor.session_start("demo")
            other = PortalVisitor(f"http://127.0.0.1:{port}").session_start("demo")
            assert session["state"] == other["state"] == "running"
            assert session["node"] != other["node"], (session, other)
            process.send_signal(how)
            assert process.stdout is not None
            said = process.stdout.read()  # to its end: the cluster has closed it
            assert process.wait(timeout=120) == 0, f"run {run}: {said}"
            # Each stopped on its signal: none had to be killed.
            assert "Stopped nginx, the nodes, Redis and PostgreSQL." in said
            assert "Killed" not in said, said
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
                process.wait()
            assert process.stdout is not None
            process.stdout.close()
        still = [pid for pid in started if process_alive(pid)]
        assert not still, f"run {run}: outlived the cluster: {still}"
        assert not processes_naming(cluster_dir), "a machine outlived its node"
        for node in ("node-1", "node-2"):
            assert not any((cluster_dir / node / "run").iterdir())
