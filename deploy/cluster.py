"""`make cluster`: PostgreSQL, Redis, the portal's nodes and nginx on this machine.

Owns: the order of one local run: the services (deploy/services.py), the
database and the demo exhibit (as `make run` prepares them, once), the nodes
(the portal's Daphne with --proxy-headers, each an install with a data
directory of its own, all sharing the database, the image store and the
secret key that signs visitors' cookies), nginx in front on 127.0.0.1:PORT;
and stopping all of it, in the reverse order, on Ctrl-C or SIGTERM, or when
one of them dies.

Run: `python -m deploy.cluster --port 8000 --nodes 2 --dir var-cluster`.
Must not: decide anything about visits; it starts and stops processes.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from deploy.services import (
    LOOPBACK,
    REPO,
    Nginx,
    PostgreSQL,
    Redis,
    Service,
    ServiceError,
    port_free,
)

NODE_STOP_TIMEOUT_S = 30.0


class Stopping(Exception):
    """SIGINT or SIGTERM arrived: stop everything that was started."""


class Died(Exception):
    """One of the started processes ended by itself: stop the rest."""


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
        self._wait_ready(self._ready, timeout_s=60)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.port}/healthz", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


def _stopping(signum: int, frame: FrameType | None) -> None:
    raise Stopping(signal.Signals(signum).name)


def cluster_run(*, port: int, nodes: int, directory: Path, demo_image: Path,
                demo_description: str) -> int:
    if nodes < 1:
        print(f"make cluster needs at least one node (NODES={nodes}).", file=sys.stderr)
        return 2
    # Others may pass through (PostgreSQL and Redis run as their own users when
    # this is root), not list it; everything inside is private to its owner.
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o711)
    postgresql = PostgreSQL(name="postgresql", directory=directory / "postgresql", port=port_free())
    redis = Redis(name="redis", directory=directory / "redis", port=port_free())
    started: list[Service] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stopping)
    try:
        started.append(postgresql)
        postgresql.start()
        started.append(redis)
        redis.start()
        node_list = []
        shared = {
            "PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url,
            # What every node must read alike: the masters and start states, and the
            # key that signs a visitor's cookie (any node may serve the next request).
            "PORTAL_IMAGE_DIR": str(directory / "images"),
            "DJANGO_SECRET_KEY": secret_key(directory / "secret_key"),
            "DJANGO_ALLOWED_HOSTS": os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost"),
        }
        for number in range(1, nodes + 1):
            node_dir = directory / f"node-{number}"
            node_port = port_free()
            node = Node(name=f"node-{number}", directory=node_dir, port=node_port, env={
                **os.environ, **shared, "PORTAL_DATA_DIR": str(node_dir),
                "PORTAL_NODE_ADDRESS": f"{LOOPBACK}:{node_port}",
            })
            node_dir.mkdir(mode=0o700, exist_ok=True)
            if number == 1:
                # As `make run` does, once the database is there; once for all nodes.
                node.manage("migrate", "--no-input", "-v", "0")
                node.manage("add_exhibit", str(demo_image), "--slug", "demo", "--boot", "hdd",
                            "--sound", "adlib", "--publish", "--title", "Portal demo desktop",
                            "--year", "1992", "--publisher", "This portal",
                            "--description", demo_description)
                node.manage("prepare_exhibit", "demo", "--wait-graphics", "--still", "2",
                            "--if-needed")
            started.append(node)
            node.start()
            node_list.append(node)
        nginx = Nginx(name="nginx", directory=directory / "nginx", port=port,
                      nodes=[f"{LOOPBACK}:{node.port}" for node in node_list],
                      media_max_bytes=int(os.environ.get("PORTAL_MEDIA_MAX_BYTES", "1457664"))
                      + 64 * 1024)
        started.append(nginx)
        nginx.start()
        print(f"Serving the portal on http://{LOOPBACK}:{port}/ (nginx in front of "
              + ", ".join(f"{node.name} on {node.port}" for node in node_list)
              + f"; PostgreSQL on {postgresql.port}, Redis on {redis.port}; "
              f"everything in {directory}). Ctrl-C stops it all.", flush=True)
        while True:
            for running in started:
                if running.process is None or running.process.poll() is not None:
                    print(f"{running.name} stopped by itself; stopping the rest. Its log: "
                          f"{running.log}", file=sys.stderr)
                    raise Died(running.name)
            time.sleep(1)  # how often it looks, not a wait for a condition
    except Stopping:
        code = 0
    except (ServiceError, subprocess.CalledProcessError) as error:
        print(f"make cluster could not start: {error}", file=sys.stderr)
        code = 1
    except Died:
        code = 1
    finally:
        # A second Ctrl-C must not cut the stop short.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        killed = [each.name for each in reversed(started)
                  if not each.stop(timeout_s=NODE_STOP_TIMEOUT_S)]
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
    args = parser.parse_args(argv)
    return cluster_run(port=args.port, nodes=args.nodes, directory=args.dir.resolve(),
                       demo_image=args.demo_image.resolve(), demo_description=args.demo_description)


if __name__ == "__main__":
    sys.exit(main())
