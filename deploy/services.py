"""The services a portal node runs on, started privately: PostgreSQL, Redis and nginx.

Owns: starting each from Debian's packages (`postgresql`, `redis-server`,
`nginx`) in a directory of its own, on a free loopback port, with nothing read
from or written to the system's configuration, data or log directories; and
stopping each by the pid it started. `make cluster` and the tests use it; real
hosts run the same programs under systemd (docs/operators.md: "Production services").

As root, PostgreSQL and Redis run as the users Debian's packages made for
them (PostgreSQL refuses root); their directories are handed to those users.
nginx keeps its master as the caller and its workers as nginx's default user;
the configuration has it write nothing to disk but its logs (which the master
opens), so the workers need no path of their own.

Must not: touch a service it did not start (the system's own clusters, a
`redis-server` or `nginx` someone else runs), listen beyond the loopback
address, or import Django: it knows processes and files, not the portal.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deploy import teardown

REPO = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = REPO / "deploy" / "nginx" / "portal.conf"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# What main's command may take to stop on the signal passed on (a test run's teardown).
COMMAND_STOP_TIMEOUT_S = 120.0
LOOPBACK = "127.0.0.1"


class ServiceError(Exception):
    """A service did not start or stop; says which, and the tail of its log."""


def port_free() -> int:
    """A TCP port on the loopback address that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def port_answers(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class _Account:
    """Who a service runs as: the caller, or (for root) the package's own user."""

    uid: int
    gid: int
    name: str

    @classmethod
    def for_service(cls, package_user: str) -> _Account:
        if os.geteuid() != 0:
            entry = pwd.getpwuid(os.geteuid())
            return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)
        try:
            entry = pwd.getpwnam(package_user)
        except KeyError as error:
            raise ServiceError(f"there is no user {package_user!r} to run the service as "
                               f"(Debian's package makes it)") from error
        return cls(entry.pw_uid, entry.pw_gid, entry.pw_name)

    def is_caller(self) -> bool:
        return self.uid == os.geteuid()

    def can_reach(self, path: Path) -> Path | None:
        """The first directory on the way to path that this account may not pass, or None."""
        groups = set(os.getgrouplist(self.name, self.gid))
        for directory in [*reversed(path.resolve().parents)]:
            status = directory.stat()
            if self.uid == 0:
                continue
            if status.st_uid == self.uid:
                bit = stat.S_IXUSR
            elif status.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not status.st_mode & bit:
                return directory
        return None

    def own(self, path: Path) -> None:
        """Make path a private directory of this account's."""
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.is_caller():
            os.chown(path, self.uid, self.gid)
        os.chmod(path, 0o700)


@dataclass
class Service:
    """One started program: its directory, its port, its process, its log."""

    name: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    stop_signal: signal.Signals = signal.SIGTERM

    @property
    def log(self) -> Path:
        return self.directory / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _spawn(self, argv: Sequence[str], *, account: _Account | None = None,
               cwd: Path | None = None, stdin_text: str | None = None,
               env: dict[str, str] | None = None) -> None:
        """Start argv with its output to the log (opened here, so the service needs
        no right to its own log's path) and wait for nothing."""
        as_other = account is not None and not account.is_caller()
        # Deferred: a stop signal cannot land between the start and its record.
        with teardown.deferred(), self.log.open("ab") as log:
            self.process = subprocess.Popen(
                list(argv), cwd=cwd or self.directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL,
                # Its own session: a Ctrl-C in the terminal reaches the runner, which
                # stops every service in order, not each service at once.
                start_new_session=True,
                user=account.uid if as_other and account else None,
                group=account.gid if as_other and account else None,
                extra_groups=[] if as_other else None,
            )
        if stdin_text is not None:
            assert self.process.stdin is not None
            self.process.stdin.write(stdin_text.encode())
            self.process.stdin.close()

    def _wait_ready(self, ready: Callable[[], bool], *, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                self.process = None
                raise ServiceError(f"{self.name} exited (code {code}) before it was ready:\n"
                                   f"{_log_tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"{self.name} was not ready within {timeout_s:.0f} s:\n"
                                   f"{_log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self, *, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the process this object started (its pid only); safe to call twice.
        False when it had to be killed: it did not stop on its signal within timeout_s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return True
        process.send_signal(self.stop_signal)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return False
        return True

    def kill(self) -> None:
        """End the process at once (SIGKILL), as a crash would."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()


def postgresql_bin_dir() -> Path:
    """Debian's newest PostgreSQL server programs (initdb, postgres)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda path: int(re.findall(r"/(\d+)/bin", path)[0]))
    if not found:
        raise ServiceError("PostgreSQL's server is not installed (Debian package postgresql)")
    return Path(found[-1]).parent


@dataclass
class PostgreSQL(Service):
    """A private PostgreSQL cluster: TCP on loopback only, no unix socket, a password.

    Its data stays in `directory/data` between starts (a second start reuses it).
    """

    database: str = "portal"
    user: str = "portal"
    password: str = ""
    account: _Account | None = None
    # More server settings (`-c name=value`), e.g. a benchmark's statistics
    # (`shared_preload_libraries=pg_stat_statements`).
    settings: dict[str, str] = field(default_factory=dict)
    # Fast shutdown: SIGTERM would wait for every client to disconnect.
    stop_signal: signal.Signals = signal.SIGINT

    @property
    def url(self) -> str:
        return f"postgres://{self.user}:{self.password}@{LOOPBACK}:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.directory / "data"

    def start(self) -> None:
        binaries = postgresql_bin_dir()
        account = self.account = self.account or _Account.for_service("postgres")
        blocked = account.can_reach(self.directory)
        if blocked is not None:
            raise ServiceError(
                f"PostgreSQL runs as {account.name!r}, which may not pass {blocked} "
                f"(mode {stat.S_IMODE(blocked.stat().st_mode):04o}): put the cluster's "
                f"directory where that user can reach it")
        account.own(self.directory)
        password_file = self.directory / "password"
        if not (self.data / "PG_VERSION").exists():
            self.password = secrets.token_urlsafe(24)
            password_file.write_text(self.password)
            if not account.is_caller():
                os.chown(password_file, account.uid, account.gid)
            self._spawn([str(binaries / "initdb"), "-D", str(self.data), "-U", self.user,
                         "--pwfile", str(password_file), "--auth", "scram-sha-256",
                         "-E", "UTF8", "--locale", "C.UTF-8"], account=account)
            assert self.process is not None
            code = self.process.wait()
            self.process = None
            if code != 0:
                raise ServiceError(f"initdb failed (code {code}):\n{_log_tail(self.log)}")
        self.password = password_file.read_text().strip()
        self._spawn([
            str(binaries / "postgres"), "-D", str(self.data), "-p", str(self.port),
            "-c", f"listen_addresses={LOOPBACK}",
            # No socket in the system's /var/run/postgresql: TCP on loopback only.
            "-c", "unix_socket_directories=",
            "-c", "logging_collector=off",
            *(option for name, value in self.settings.items() for option in ("-c", f"{name}={value}")),
        ], account=account)
        self._wait_ready(self._ready)
        self._database_create()

    def _connect(self, database: str) -> object:
        import psycopg

        return psycopg.connect(host=LOOPBACK, port=self.port, user=self.user,
                               password=self.password, dbname=database, connect_timeout=2,
                               autocommit=True)

    def _ready(self) -> bool:
        import psycopg

        try:
            with self._connect("postgres"):  # type: ignore[attr-defined]
                return True
        except psycopg.OperationalError:
            return False

    def _database_create(self) -> None:
        with self._connect("postgres") as connection:  # type: ignore[attr-defined]
            found = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                       [self.database]).fetchone()
            if found is None:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    def restart(self) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start()


@dataclass
class Redis(Service):
    """A private Redis: loopback only, a password, nothing saved to disk."""

    password: str = ""
    account: _Account | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        account = self.account = self.account or _Account.for_service("redis")
        account.own(self.directory)
        self.password = self.password or secrets.token_urlsafe(24)
        # The configuration (with the password) goes in on standard input, so no
        # other user sees it in the process list; no `dir`: the server stays in
        # the directory it was started in and saves nothing there.
        config = "\n".join([
            f"port {self.port}", f"bind {LOOPBACK}", "protected-mode yes", "daemonize no",
            'save ""', "appendonly no", 'logfile ""', f'requirepass "{self.password}"',
            "", ""])
        self._spawn([shutil.which("redis-server") or "redis-server", "-"],
                    account=account, stdin_text=config)
        self._wait_ready(self._ready)

    def _ready(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=LOOPBACK, port=self.port, password=self.password,
                                    socket_timeout=2).ping())
        except redis.RedisError:
            return False

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Nginx(Service):
    """A private nginx in front of the nodes, configured from deploy/nginx/portal.conf."""

    nodes: list[str] = field(default_factory=list)
    request_max_bytes: int = 1024 * 1024
    upload_max_bytes: int = 2 * 1024**3 + 1024 * 1024
    upload_path_prefix: str = "/admin/portal/diskimage/upload/"
    # Visitors' files for their machine: PORTAL_MEDIA_MAX_BYTES and the form around them.
    media_max_bytes: int = 1457664 + 64 * 1024

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        site = nginx_site_render(
            NGINX_TEMPLATE.read_text(), listen=f"{LOOPBACK}:{self.port}", nodes=self.nodes,
            request_max_bytes=self.request_max_bytes, upload_max_bytes=self.upload_max_bytes,
            upload_path_prefix=self.upload_path_prefix, media_max_bytes=self.media_max_bytes)
        (self.directory / "portal.conf").write_text(site)
        (self.directory / "nginx.conf").write_text(nginx_main_render(self.directory))
        self._spawn([shutil.which("nginx") or "/usr/sbin/nginx", "-p", f"{self.directory}/",
                     "-c", str(self.directory / "nginx.conf"),
                     "-e", str(self.directory / "error.log")])
        self._wait_ready(self._listening)

    def _listening(self) -> bool:
        """nginx writes its pid file once its listening socket is bound: another program
        answering on the port is not this nginx, which will exit for want of it."""
        try:
            written = int((self.directory / "nginx.pid").read_text())
        except (OSError, ValueError):
            return False
        return written == self.pid and port_answers(self.port)

    # Graceful would wait for every display socket to end.
    stop_signal: signal.Signals = signal.SIGTERM


def nginx_main_render(prefix: Path) -> str:
    """nginx's main configuration for a private run: every path it would otherwise
    take from its build (pid, logs, temporary files) is inside prefix."""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by deploy/services.py for a private run; see deploy/nginx/portal.conf.
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    # Which node (upstream) took each request, and how long it took.
    log_format portal '$remote_addr [$time_local] "$request" $status $body_bytes_sent '
                      '$request_time upstream=$upstream_addr';
    access_log {prefix}/access.log portal;
{temp}
    include {prefix}/portal.conf;
}}
"""


_MARK = re.compile(r"^(?P<indent>\s*)(?P<directive>.*?)\s*# @(?P<name>[a-z_]+)\s*$")


def nginx_site_render(template: str, *, listen: str, nodes: Sequence[str], request_max_bytes: int,
                      upload_max_bytes: int, upload_path_prefix: str,
                      media_max_bytes: int = 1457664 + 64 * 1024) -> str:
    """deploy/nginx/portal.conf with the lines marked `# @name` given this run's values.

    The file is a working configuration as shipped (one node on 127.0.0.1:8001,
    port 80, the portal's default limits); a marked line is replaced whole.
    """
    values = {
        "listen": [f"listen {listen};"],
        "node": [f"server {node};" for node in nodes],
        "request_max_bytes": [f"client_max_body_size {request_max_bytes};"],
        "upload_location": [f"location ^~ {upload_path_prefix} {{"],
        "upload_max_bytes": [f"client_max_body_size {upload_max_bytes};"],
        "media_max_bytes": [f"client_max_body_size {media_max_bytes};"],
    }
    out: list[str] = []
    seen: set[str] = set()
    for line in template.splitlines():
        match = _MARK.match(line)
        if match is None:
            out.append(line)
            continue
        name = match["name"]
        if name not in values:
            raise ServiceError(f"{NGINX_TEMPLATE.name}: unknown mark @{name}")
        if name in seen:
            continue  # a mark repeated on several lines (the nodes) is rendered once
        seen.add(name)
        out.extend(match["indent"] + value for value in values[name])
    missing = set(values) - seen
    if missing:
        raise ServiceError(f"{NGINX_TEMPLATE.name}: marks missing: {sorted(missing)}")
    return "\n".join(out) + "\n"



def main(argv: Sequence[str] | None = None) -> int:
    """`python -m deploy.services COMMAND…`: run COMMAND with a private PostgreSQL and
    Redis (PORTAL_DATABASE_URL and PORTAL_REDIS_URL in its environment), then stop them.
    The in-process test suites run on the production services this way. On SIGTERM,
    SIGINT or SIGHUP, COMMAND gets the same signal and is waited for, then Redis and
    PostgreSQL stop and their directory goes."""
    import sys

    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(main.__doc__, file=sys.stderr)
        return 2
    try:
        with teardown.Stops() as stops:
            root = stops.directory("ps-")
            os.chmod(root, 0o711)  # passable (not listable) for the services' own users
            postgresql = PostgreSQL(name="postgresql", directory=root / "postgresql", port=port_free())
            stops.callback(postgresql.stop)
            postgresql.start()
            redis = Redis(name="redis", directory=root / "redis", port=port_free())
            stops.callback(redis.stop)
            redis.start()
            with teardown.deferred():
                # In this process's group: a terminal's Ctrl-C reaches it as it would
                # without the services around it.
                process = subprocess.Popen(command, env={
                    **os.environ, "PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url})
                stops.callback(teardown.command_stop, process, timeout_s=COMMAND_STOP_TIMEOUT_S)
            return process.wait()
    except teardown.Stopping as stopping:
        return stopping.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
