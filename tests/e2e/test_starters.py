"""Every starter stops what it started on a stop signal (deploy/teardown.py).

Each kind of starter runs as a process of its own: `python -m deploy.services`
around a command, a benchmark's nodes behind nginx (bench/services.py: served
portals on PostgreSQL and Redis), and a test run whose fixtures serve a portal
(tests/e2e/starter_held.py). Once its services answer and a visitor's machine
runs, every process below it is noted, the signal is sent to it alone (as a
service manager or `kill` does), and then none of those processes may be left,
nor any of its directories.
"""
from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import REPO
from tests.e2e.starter_held import STARTED

# A start that hangs fails the test instead of stalling it.
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 90

# A benchmark's starter as bench/services.py uses it, unprepared (a cold boot's QEMU
# runs as soon as the visit starts), held until the signal.
BENCH_NODES = f"""
import json, signal
from bench.services import nodes_behind_nginx
from tests.support.portal_http import PortalVisitor
with nodes_behind_nginx(1, prepare=False) as cluster:
    assert PortalVisitor(cluster.url).session_start("demo")["state"] == "running"
    (node,) = cluster.nodes.values()
    print({STARTED!r} + json.dumps([str(node.root), str(cluster.nginx.directory.parent)]), flush=True)
    signal.pause()
"""
# The command deploy.services runs: it says when it runs (after both services answer).
COMMAND = f"import signal; print({STARTED!r} + '[]', flush=True); signal.pause()"


class Starter:
    """A starter process, its output read to the line that says everything runs."""

    def __init__(self, argv: list[str], log: Path) -> None:
        with log.open("wb") as errors:
            self.process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=errors, text=True)
        self.log = log

    def started(self) -> list[Path]:
        """Once it runs: the directories it reported."""
        assert self.process.stdout is not None
        watchdog = threading.Timer(START_TIMEOUT_S, self.process.kill)
        watchdog.start()
        try:
            for line in self.process.stdout:
                if line.startswith(STARTED):
                    return [Path(each) for each in json.loads(line.removeprefix(STARTED))]
        finally:
            watchdog.cancel()
        raise AssertionError(f"the starter ended (code {self.process.wait()}) before it ran:\n"
                             + self.log.read_text(errors="replace")[-3000:])

    def descendants(self) -> list[psutil.Process]:
        return list(psutil.Process(self.process.pid).children(recursive=True))

    def stopped_by(self, how: signal.Signals) -> int:
        self.process.send_signal(how)
        try:
            self.process.communicate(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise AssertionError(f"the starter did not stop on {how.name} within "
                                 f"{STOP_TIMEOUT_S} s") from None
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


StarterFactory = Callable[[list[str]], Starter]


@pytest.fixture
def starter_run(tmp_path: Path) -> Iterator[StarterFactory]:
    """Start starters; one still running afterwards is killed (and what it started,
    found below it, too), so that a failure leaves nothing behind either."""
    made: list[Starter] = []

    def run(argv: list[str]) -> Starter:
        starter = Starter(argv, tmp_path / f"starter-{len(made)}.log")
        made.append(starter)
        return starter

    yield run
    for starter in made:
        if starter.process.poll() is None:
            below = starter.descendants()
            starter.kill()
            for process in below:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()


def command_line(process: psutil.Process) -> list[str]:
    """Its command line; none once it has ended (a zombie's is gone too)."""
    try:
        return list(process.cmdline())
    except psutil.NoSuchProcess:
        return []


def left_running(processes: list[psutil.Process]) -> list[str]:
    """Those of processes still running (a zombie has ended); pid reuse is told apart."""
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{process.pid} {' '.join(command_line(process))[:120]}")
        except psutil.NoSuchProcess:
            continue
    return left


# What the starters' command lines name but did not make: this checkout and its
# Python (a clone may live under /tmp itself).
NOT_MADE = {Path(*REPO.parts[:3]), Path(*Path(sys.prefix).resolve().parts[:3]),
            Path(*Path(sys.executable).parts[:3])}


def named_directories(processes: list[psutil.Process]) -> set[Path]:
    """The directories under /tmp that the processes' command lines name (but the
    checkout's and its Python's)."""
    found = set()
    for process in processes:
        for argument in command_line(process):
            for word in argument.split(","):  # QEMU's options: path=/tmp/…,…
                path = word.split("=")[-1]
                if path.startswith("/tmp/") and len(Path(path).parts) > 2:
                    found.add(Path(*Path(path).parts[:3]))
    return found - NOT_MADE


def assert_stopped_all(starter: Starter, how: signal.Signals, reported: list[Path]) -> int:
    below = starter.descendants()
    directories = set(reported) | named_directories(below)
    assert directories, "the starter's directories were found"
    code = starter.stopped_by(how)
    left = left_running(below)
    assert not left, f"outlived the starter stopped by {how.name}: {left}"
    remaining = sorted(str(path) for path in directories if path.exists())
    assert not remaining, f"directories left by the starter stopped by {how.name}: {remaining}"
    return code


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=lambda how: how.name)
def test_it_stops_deploy_services_command_and_services_on_a_signal(
        starter_run: StarterFactory, how: signal.Signals) -> None:
    starter = starter_run([sys.executable, "-m", "deploy.services", "--",
                           sys.executable, "-c", COMMAND])
    starter.started()
    names = {" ".join(command_line(process)) for process in starter.descendants()}
    assert any("postgres" in name for name in names)
    assert any("redis-server" in name for name in names)
    assert assert_stopped_all(starter, how, []) == 128 + how


def test_it_stops_a_benchmarks_served_portal_and_services_on_sigterm(
        starter_run: StarterFactory) -> None:
    starter = starter_run([sys.executable, "-c", BENCH_NODES])
    reported = starter.started()
    assert any("qemu-system" in " ".join(command_line(process)) for process in starter.descendants())
    assert_stopped_all(starter, signal.SIGTERM, reported)


def test_it_stops_a_test_runs_served_portal_and_services_on_sigterm(
        starter_run: StarterFactory) -> None:
    starter = starter_run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                           str(Path(__file__).with_name("starter_held.py"))])
    reported = starter.started()
    assert any("qemu-system" in " ".join(command_line(process)) for process in starter.descendants())
    assert_stopped_all(starter, signal.SIGTERM, reported)
