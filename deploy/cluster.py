"""`make cluster`: PostgreSQL, Redis, the portal's nodes and nginx on this machine.

Owns: the order of one local run: the services (deploy/services.py), the
database and the demo exhibit (as `make run` prepares them, once), the nodes
(the portal's Daphne with --proxy-headers, each an install with a data
directory of its own, all sharing the database, the image store and the
secret key that signs visitors' cookies), nginx in front on 127.0.0.1:PORT;
keeping each of them running as systemd keeps a unit with `Restart=on-failure`
(deploy/systemd/portal-node.service): one that dies is started again after
RESTART_DELAY_S, alone, on its port and data, while the rest serve on, until it
has died RESTART_BURST times within RESTART_INTERVAL_S; and stopping all of it,
in the reverse order, on Ctrl-C, SIGTERM or SIGHUP. Each running process's pid
is in `DIR/pids/NAME.pid`.

Run: `python -m deploy.cluster --port 8000 --nodes 2 --dir var-cluster`.
Must not: decide anything about visits; it starts, watches and stops processes.
A dead node's visits are the portal's (the other nodes end them, or the node
itself when it is back); its machines are the node's own, ended here only once
the node is not started again.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import psutil

from deploy.services import (
    LOOPBACK,
    REPO,
    Nginx,
    PostgreSQL,
    Redis,
    Service,
    ServiceError,
)

NODE_STOP_TIMEOUT_S = 30.0
# As deploy/systemd/portal-node.service: RestartSec=, StartLimitBurst=, StartLimitIntervalSec=.
RESTART_DELAY_S = 2.0
RESTART_BURST = 5
RESTART_INTERVAL_S = 60.0
# How long what is left of a dead process's group gets to go after SIGKILL.
LEFTOVERS_TIMEOUT_S = 10.0
# Exits that are a stop, not a failure (systemd's Restart=on-failure starts none of them again).
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopping(Exception):
    """SIGINT, SIGTERM or SIGHUP arrived: stop everything that was started."""


@dataclass
class Node(Service):
    """One portal node: the portal's Daphne, trusting nginx's X-Forwarded-For."""

    env: dict[str, str] = field(default_factory=dict)

    def manage(self, *args: str) -> None:
        subprocess.run([sys.executable, str(REPO / "manage.py"), *args], env=self.env, cwd=REPO,
                       check=True, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self._spawn([sys.executable, "-m", "portal.server", "-b", LOOPBACK, "-p", str(self.port),
                     "--proxy-headers", "portal.asgi:application"], cwd=REPO, env=self.env)
        # /healthz makes the node's broker, which first sweeps up what an earlier
        # run of the node left (its machines, and their visits, ended `server`).
        self._wait_ready(self._ready, timeout_s=60)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


@dataclass
class Restarts:
    """When a process that failed is started again: systemd's RestartSec= and start limit."""

    delay_s: float = RESTART_DELAY_S
    burst: int = RESTART_BURST
    interval_s: float = RESTART_INTERVAL_S
    failures: list[float] = field(default_factory=list)

    def failed(self, at: float) -> float | None:
        """Count a failure at `at` (monotonic seconds): how long to wait before starting
        the process again, or None when it failed `burst` times within `interval_s`."""
        self.failures = [*(then for then in self.failures if at - then < self.interval_s), at]
        return None if len(self.failures) >= self.burst else self.delay_s


@dataclass
class Supervised:
    """One process the supervisor keeps running."""

    service: Service
    start: Callable[[], None]
    pid_file: Path
    restarts: Restarts = field(default_factory=Restarts)
    # A node's data directory: what names it (its machines) ends once the node will not run again.
    machines_under: Path | None = None
    pidfd: int | None = None
    # Since when it has been down (monotonic), and when it is due to start again.
    down_since: float | None = None
    restart_at: float | None = None
    given_up: bool = False

    @property
    def name(self) -> str:
        return self.service.name


class Supervisor:
    """Starts processes in order, starts again each one that fails, stops them in reverse.

    Waits for deaths on the processes' pidfds, so a death is seen at once and
    nothing is polled.
    """

    def __init__(self, pid_dir: Path) -> None:
        self.pid_dir = pid_dir
        self.supervised: list[Supervised] = []
        self._selector = selectors.DefaultSelector()

    def start(self, service: Service, start: Callable[[], None], *,
              machines_under: Path | None = None) -> None:
        """Start a process and keep it running; recorded first, so that a start that
        fails or is interrupted is stopped with the rest."""
        item = Supervised(service, start, self.pid_dir / f"{service.name}.pid",
                          machines_under=machines_under)
        self.supervised.append(item)
        start()
        self._watch(item)

    def run(self) -> None:
        """Keep everything running; returns only by Stopping (from a signal)."""
        while True:
            due = [item.restart_at for item in self.supervised if item.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            for key, _ in self._selector.select(timeout):
                self._died(key.data)
            now = time.monotonic()
            for item in self.supervised:
                if item.restart_at is not None and item.restart_at <= now:
                    self._restart(item)

    def stop(self, *, timeout_s: float) -> list[str]:
        """Stop everything in the reverse order of its start; the names of those that
        had to be killed. Safe to call twice."""
        killed = []
        for item in reversed(self.supervised):
            process = item.service.process
            self._unwatch(item)
            if process is not None and _exited(process.pid):
                self._reap(item)
            elif not item.service.stop(timeout_s=timeout_s):
                killed.append(item.name)
            if item.machines_under is not None:
                machines_end(item.machines_under)
            item.restart_at = None
        with contextlib.suppress(OSError):
            self.pid_dir.rmdir()
        self._selector.close()
        return killed

    def _watch(self, item: Supervised) -> None:
        process = item.service.process
        assert process is not None
        # The process is this one's child and not reaped yet, so its pid is its own.
        item.pidfd = os.pidfd_open(process.pid)
        self._selector.register(item.pidfd, selectors.EVENT_READ, item)
        self.pid_dir.mkdir(mode=0o700, exist_ok=True)
        written = item.pid_file.with_suffix(".new")
        written.write_text(f"{process.pid}\n")
        written.replace(item.pid_file)

    def _unwatch(self, item: Supervised) -> None:
        if item.pidfd is not None:
            self._selector.unregister(item.pidfd)
            os.close(item.pidfd)
            item.pidfd = None
        item.pid_file.unlink(missing_ok=True)

    def _reap(self, item: Supervised) -> int:
        """The dead process's exit status, after what is left of its process group (an
        nginx worker, PostgreSQL's backends) is ended: before the reaping, while its
        pid, and so its group's id, can be nobody else's."""
        process = item.service.process
        assert process is not None
        group_end(process.pid)
        code = process.wait()
        item.service.process = None
        return code

    def _died(self, item: Supervised) -> None:
        assert item.service.process is not None
        pid = item.service.process.pid
        self._unwatch(item)
        code = self._reap(item)
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if code == 0 or (code < 0 and -code in CLEAN_SIGNALS):
            print(f"{item.name} (pid {pid}) ended by itself ({how}); as a stop, not a failure, it "
                  f"is not started again (Restart=on-failure); the rest keep running.",
                  file=sys.stderr, flush=True)
            item.given_up = True
            self._abandoned(item)
            return
        self._failed(item, f"(pid {pid}) died ({how})")

    def _failed(self, item: Supervised, what: str) -> None:
        now = time.monotonic()
        if item.down_since is None:
            item.down_since = now
        delay_s = item.restarts.failed(now)
        if delay_s is None:
            print(f"{item.name} {what}: it failed {item.restarts.burst} times within "
                  f"{item.restarts.interval_s:.0f} s, so it is not started again; the rest keep "
                  f"running. Its log: {item.service.log}", file=sys.stderr, flush=True)
            item.given_up = True
            self._abandoned(item)
            return
        item.restart_at = now + delay_s
        print(f"{item.name} {what}; starting it again in {delay_s:.0f} s "
              f"(failure {len(item.restarts.failures)} of {item.restarts.burst} allowed within "
              f"{item.restarts.interval_s:.0f} s). Its log: {item.service.log}",
              file=sys.stderr, flush=True)

    def _abandoned(self, item: Supervised) -> None:
        """A node that will not run again: its machines end now, not at the cluster's stop
        (the other nodes ended its visits); its files wait for its next start."""
        if item.machines_under is not None:
            machines_end(item.machines_under)

    def _restart(self, item: Supervised) -> None:
        item.restart_at = None
        try:
            item.start()
        except Stopping:
            raise
        except Exception as error:
            # Whatever kept it from starting (PostgreSQL's database step, no file
            # descriptor left), it alone is down: what the start left goes first.
            item.service.stop()
            self._failed(item, f"did not start again ({error})")
            return
        self._watch(item)
        assert item.down_since is not None
        assert item.service.process is not None
        print(f"{item.name} is back (pid {item.service.process.pid}), "
              f"{time.monotonic() - item.down_since:.1f} s after it died.", flush=True)
        item.down_since = None


def _exited(pid: int) -> bool:
    """Whether this process's child pid has ended (it stays unreaped)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def processes_end(pids: Iterable[int], *, timeout_s: float = LEFTOVERS_TIMEOUT_S) -> list[int]:
    """SIGKILL each of pids and wait, on their pidfds, until they have ended; those that
    had not by timeout_s. Each pidfd is opened before the signal, so a pid that ends
    meanwhile and is given to a new process is not signalled."""
    pidfds: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            pidfds[pid] = os.pidfd_open(pid)
    with selectors.DefaultSelector() as selector:
        for pid, pidfd in pidfds.items():
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            selector.register(pidfd, selectors.EVENT_READ, pid)
        deadline = time.monotonic() + timeout_s
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(deadline - time.monotonic()):
                selector.unregister(key.fd)
        left = [key.data for key in selector.get_map().values()]
    for pidfd in pidfds.values():
        os.close(pidfd)
    return left


def group_end(group: int) -> None:
    """End what is left of a process group whose leader has died, unreaped."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError):
            if process.pid != group and os.getpgid(process.pid) == group:
                members.append(process.pid)
    left = processes_end(members)
    if left:
        print(f"Still running {LEFTOVERS_TIMEOUT_S:.0f} s after SIGKILL: {left}.", file=sys.stderr)


def machines_end(node_dir: Path) -> None:
    """End the processes whose command line names a node's data directory (its QEMU
    machines, which outlive a node that was killed), as its reaper would."""
    needle = f"{node_dir}/"
    found = [process.pid for process in psutil.process_iter(["cmdline"])
             if process.pid != os.getpid()
             and any(needle in argument for argument in process.info["cmdline"] or ())]
    if found:
        print(f"Ending {len(found)} machine(s) of {node_dir.name}, which is not running.",
              file=sys.stderr, flush=True)
        processes_end(found)


def ports_free(count: int, *, besides: int) -> list[int]:
    """count different loopback ports nothing listens on now, none of them `besides`
    (nginx's, which is taken last): each probe stays bound until all are chosen."""
    ports: list[int] = []
    with contextlib.ExitStack() as probes:
        while len(ports) < count:
            probe = probes.enter_context(socket.socket())
            probe.bind((LOOPBACK, 0))
            if (found := int(probe.getsockname()[1])) != besides:
                ports.append(found)
    return ports


def port_taken(port: int) -> bool:
    """Whether something listens on the loopback port (nginx could not bind it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return True
    return False


def _stopping(signum: int, frame: FrameType | None) -> None:
    raise Stopping(signal.Signals(signum).name)


def cluster_run(*, port: int, nodes: int, directory: Path, demo_image: Path,
                demo_description: str, demo_rights: str = "") -> int:
    if nodes < 1:
        print(f"make cluster needs at least one node (NODES={nodes}).", file=sys.stderr)
        return 2
    if port_taken(port):
        print(f"make cluster cannot listen on {LOOPBACK}:{port}: something else does "
              f"(PORT=... chooses another).", file=sys.stderr)
        return 2
    # Others may pass through (PostgreSQL and Redis run as their own users when
    # this is root), not list it; everything inside is private to its owner.
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o711)
    postgresql_port, redis_port, *node_ports = ports_free(2 + nodes, besides=port)
    postgresql = PostgreSQL(name="postgresql", directory=directory / "postgresql", port=postgresql_port)
    redis = Redis(name="redis", directory=directory / "redis", port=redis_port)
    supervisor = Supervisor(directory / "pids")
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stopping)
    try:
        supervisor.start(postgresql, postgresql.start)
        supervisor.start(redis, redis.start)
        node_list = []
        shared = {
            "PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url,
            # What every node must read alike: the masters and start states, and the
            # key that signs a visitor's cookie (any node may serve the next request).
            "PORTAL_IMAGE_DIR": str(directory / "images"),
            # ...and the exhibits' thumbnails, which any node serves.
            "PORTAL_THUMBNAIL_DIR": str(directory / "thumbnails"),
            # The public origin is nginx's, whichever node answers.
            "PORTAL_PUBLIC_URL": os.environ.get("PORTAL_PUBLIC_URL", f"http://{LOOPBACK}:{port}"),
            "DJANGO_SECRET_KEY": secret_key(directory / "secret_key"),
            "DJANGO_ALLOWED_HOSTS": os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost"),
        }
        for number, node_port in enumerate(node_ports, start=1):
            node_dir = directory / f"node-{number}"
            node = Node(name=f"node-{number}", directory=node_dir, port=node_port, env={
                **os.environ, **shared, "PORTAL_DATA_DIR": str(node_dir),
                "PORTAL_NODE_ADDRESS": f"{LOOPBACK}:{node_port}",
            })
            node_dir.mkdir(mode=0o700, exist_ok=True)
            if number == 1:
                # As `make run` does, once the database is there; once for all nodes.
                node.manage("migrate", "--no-input", "-v", "0")
                node.manage("add_exhibit", str(demo_image), "--slug", "demo", "--boot", "hdd",
                            "--sound", "adlib", "--publish", "--visitors-may-record",
                            "--title", "Portal demo desktop",
                            "--year", "1992", "--publisher", "This portal", "--platform", "windows3",
                            "--rights", demo_rights, "--description", demo_description)
                node.manage("prepare_exhibit", "demo", "--wait-graphics", "--still", "2",
                            "--if-needed")
                node.manage("thumbnails")
            supervisor.start(node, node.start, machines_under=node_dir)
            node_list.append(node)
        nginx = Nginx(name="nginx", directory=directory / "nginx", port=port,
                      nodes=[f"{LOOPBACK}:{node.port}" for node in node_list],
                      media_max_bytes=int(os.environ.get("PORTAL_MEDIA_MAX_BYTES", "1457664"))
                      + 64 * 1024)
        supervisor.start(nginx, nginx.start)
        print(f"Serving the portal on http://{LOOPBACK}:{port}/ (nginx in front of "
              + ", ".join(f"{node.name} on {node.port}" for node in node_list)
              + f"; PostgreSQL on {postgresql.port}, Redis on {redis.port}; "
              f"everything in {directory}). A process that dies is started again "
              f"after {RESTART_DELAY_S:.0f} s. Ctrl-C stops it all.", flush=True)
        supervisor.run()
        code = 0
    except Stopping:
        code = 0
    except (ServiceError, subprocess.CalledProcessError) as error:
        print(f"make cluster could not start: {error}", file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not cut the stop short.
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        killed = supervisor.stop(timeout_s=NODE_STOP_TIMEOUT_S)
        print("Stopped nginx, the nodes, Redis and PostgreSQL.", file=sys.stderr)
    if killed:
        print(f"Killed after {NODE_STOP_TIMEOUT_S:.0f} s without stopping: {', '.join(killed)}.",
              file=sys.stderr)
        return 1
    return code


def secret_key(path: Path) -> str:
    """The cluster's one secret key, made on its first run and kept (0600) beside it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(50)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="where nginx listens on 127.0.0.1")
    parser.add_argument("--nodes", type=int, default=2, help="portal nodes, each an install of its own")
    parser.add_argument("--dir", type=Path, default=REPO / "var-cluster",
                        help="the cluster's own directory (databases, nodes' data, logs)")
    parser.add_argument("--demo-image", type=Path, default=REPO / "build" / "demo.img")
    parser.add_argument("--demo-description", default="")
    parser.add_argument("--demo-rights", default="")
    args = parser.parse_args(argv)
    return cluster_run(port=args.port, nodes=args.nodes, directory=args.dir.resolve(),
                       demo_image=args.demo_image.resolve(), demo_description=args.demo_description,
                       demo_rights=args.demo_rights)


if __name__ == "__main__":
    sys.exit(main())
