"""A real portal served by Daphne, and Debian's Chromium driven by Playwright."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from deploy import teardown
from tests.conftest import REPO, service_stopped
from tests.support.install_stores import InstallStores, install_stores_allot
from tests.support.install_template import install_copy
from tests.support.processes import processes_naming, visit_machine

if TYPE_CHECKING:
    from deploy.services import Nginx

CHROMIUM = os.environ.get("PORTAL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# Management commands one after another, each as `manage.py <command> <args>` would run it.
_COMMANDS_RUN = (
    "import json, os, sys, django\n"
    "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'portal.settings')\n"
    "django.setup()\n"
    "from django.core.management import call_command\n"
    "for command in json.loads(sys.argv[1]):\n"
    "    call_command(*command)\n"
)


@dataclass
class Portal:
    url: str
    root: Path
    env: dict[str, str]
    port: int
    process: subprocess.Popen[bytes] | None = None
    # Behind a proxy (nginx): the visitor's address from X-Forwarded-For.
    proxy_headers: bool = False

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def machine(self, session_id: str) -> tuple[int, Path]:
        """The pid and run directory of a running visit's machine (the run root also
        holds the warm pool's)."""
        return visit_machine(self.env, session_id)

    def manage(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, str(REPO / "manage.py"), *args],
            env=self.env, check=True, capture_output=True, text=True, cwd=REPO,
        ).stdout

    def manage_each(self, *commands: list[str]) -> None:
        """Several commands, as `manage.py` runs each, in one Python (one Django start)."""
        subprocess.run([sys.executable, "-c", _COMMANDS_RUN, json.dumps(commands)],
                       env=self.env, check=True, capture_output=True, text=True, cwd=REPO)

    def serve(self) -> None:
        """Start Daphne as `make run` does, and wait until it answers."""
        with teardown.deferred(), (self.root / "daphne.log").open("ab") as log:
            self.process = subprocess.Popen(
                daphne_argv(self.port, proxy_headers=self.proxy_headers), cwd=REPO, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C in the terminal reaches the test run alone,
                # whose fixtures stop what they started in order.
                start_new_session=True,
            )
        _wait_until_serving(self.url, self.process, timeout_s=30)

    def stop(self) -> None:
        """Stop Daphne the way a service manager does (SIGTERM), and wait."""
        process, self.process = self.process, None
        if process is not None:
            teardown.process_stop(process, timeout_s=30)

    def crash(self) -> None:
        """Kill Daphne outright (SIGKILL), as a crash or the OOM killer would."""
        process, self.process = self.process, None
        assert process is not None
        process.kill()
        process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_serving(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Daphne exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            # Not listening yet: Daphne is still importing the site.
            time.sleep(0.1)
    raise RuntimeError("Daphne did not start serving in time")


def daphne_argv(port: int, *, proxy_headers: bool = False) -> list[str]:
    """Daphne as `make run` starts it (and a node behind nginx, with proxy_headers)."""
    return [sys.executable, "-m", "portal.server", "-b", "127.0.0.1", "-p", str(port),
            *(["--proxy-headers"] if proxy_headers else []), "portal.asgi:application"]


@pytest.fixture
def portal_settings() -> dict[str, str]:
    """Settings (environment variables) for the served portal; tests override it."""
    return {}


PortalFactory = Callable[..., Portal]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test, so its fixtures know whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _log_told(site: Portal, lines: int = 60) -> None:
    """The end of a served portal's log, for a failed test's report (CI keeps no files)."""
    log = site.root / "daphne.log"
    if log.exists():
        said = [line for line in log.read_text(errors="replace").splitlines()
                if not line.startswith((" ", "\t"))]
        print(f"--- the last {lines} lines of {site.url}'s log (tracebacks' frames left out) ---")
        print("\n".join(said[-lines:]))


@pytest.fixture(scope="session")
def migrated_database() -> Iterator[Callable[[dict[str, str]], Path]]:
    """An empty SQLite database as `migrate` leaves it, made once per test process and
    copied into each new install that has none (the same file, without a Django start
    each time). Installs on PostgreSQL migrate their own."""
    made: list[Path] = []

    def database(env: dict[str, str]) -> Path:
        if not made:
            root = Path(tempfile.mkdtemp(prefix="pe-migrated-", dir="/tmp"))
            made.append(root)
            subprocess.run([sys.executable, str(REPO / "manage.py"), "migrate", "--no-input", "-v", "0"],
                           env={**env, "PORTAL_DATA_DIR": str(root)}, check=True, capture_output=True,
                           cwd=REPO)
        return made[0] / "portal.sqlite3"

    yield database
    for root in made:
        shutil.rmtree(root, ignore_errors=True)


# Settings under which an install is made by its own commands, not copied
# (tests/support/install_template.py): where its files are, and what its machines are.
TEMPLATE_UNSAFE = {"PORTAL_IMAGE_DIR", "PORTAL_DATA_DIR", "PORTAL_RUN_DIR", "PORTAL_THUMBNAIL_DIR",
                   "PORTAL_RECORDING_DIR", "PORTAL_DATABASE_URL", "PORTAL_DATABASE_PATH",
                   "PORTAL_ACCELERATOR", "PORTAL_QEMU_UID_BASE", "PORTAL_QEMU", "PORTAL_QEMU_IMG"}


@pytest.fixture(scope="session")
def prepared_install(migrated_database: Callable[[dict[str, str]], Path]
                     ) -> Iterator[Callable[[dict[str, str], object, list[list[str]]], Path]]:
    """A prepared install's data directory per kind, made once per test process by
    the real commands (migrate, add_exhibit, prepare_exhibit), for installs to copy."""
    made: dict[object, Path] = {}

    def install(env: dict[str, str], kind: object, commands: list[list[str]]) -> Path:
        if kind not in made:
            root = Path(tempfile.mkdtemp(prefix="pe-template-", dir="/tmp"))
            made[kind] = root
            shutil.copyfile(migrated_database(env), root / "portal.sqlite3")
            subprocess.run([sys.executable, "-c", _COMMANDS_RUN, json.dumps(commands)],
                           env={**env, "PORTAL_DATA_DIR": str(root)}, check=True, capture_output=True,
                           cwd=REPO)
        return made[kind]

    yield install
    for root in made.values():
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def portal_make(demo_image: Path, request: pytest.FixtureRequest,
                migrated_database: Callable[[dict[str, str]], Path],
                prepared_install: Callable[[dict[str, str], object, list[list[str]]], Path]
                ) -> Iterator[PortalFactory]:
    """Make served portals, each an install of its own (its own data directory);
    afterwards each is stopped and must have left nothing behind. A failed test's
    report ends with each portal's log.

    On the production services (deploy.services: PORTAL_DATABASE_URL in the
    environment) each install also gets a database and a Redis database of its own
    (tests/support/install_stores.py), dropped after it stops; a portal made with
    demo=False after another is another node of that portal and shares its own."""
    made: list[Portal] = []
    allotted: list[InstallStores] = []

    def make(settings: dict[str, str] | None = None, *, prepare: bool = True,
             data_dir: Path | None = None, proxy_headers: bool = False,
             demo: bool = True, sound: str = "") -> Portal:
        """sound: the demo's sound cards (add_exhibit --sound), besides the PC speaker."""
        port = _free_port()
        # Deferred: a stop signal cannot land between the directory and its record.
        with teardown.deferred():
            root = data_dir or Path(tempfile.mkdtemp(prefix="pe-", dir="/tmp"))
            if not demo and made:
                # Another node of the portal made before: its database and Redis.
                stores = {name: made[-1].env[name] for name in ("PORTAL_DATABASE_URL", "PORTAL_REDIS_URL")
                          if name in made[-1].env}
            else:
                allotted.append(install_stores_allot(os.environ, named=settings or {}))
                stores = allotted[-1].settings
            env = {
                **os.environ,
                "PORTAL_DATA_DIR": str(root),
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "PYTHONUNBUFFERED": "1",
                **stores,
                **(settings or {}),
            }
            site = Portal(url=f"http://127.0.0.1:{port}", root=root, env=env, port=port,
                          proxy_headers=proxy_headers)
            made.append(site)
        database = root / "portal.sqlite3"
        # A data directory of the test's own (data_dir) is made as the portal makes it.
        on_sqlite = not any(name in env for name in ("PORTAL_DATABASE_URL", "PORTAL_DATABASE_PATH"))
        commands: list[list[str]] = []
        demo_commands = [["add_exhibit", str(demo_image), "--slug", "demo", "--title", "Portal demo",
                          "--boot", "hdd", "--year", "1992", "--sound", sound or "none", "--publish",
                          "--visitors-may-record"]]
        if prepare:
            # As `make run` does: visitors resume the booted desktop.
            demo_commands.append(["prepare_exhibit", "demo", "--wait-graphics", "--still", "1"])
        own = on_sqlite and data_dir is None and not database.exists()
        if own and demo and not (set(settings or {}) & TEMPLATE_UNSAFE):
            # A copy of this process's install of the same kind, made by the commands once.
            install_copy(prepared_install(env, (sound, prepare), demo_commands), root)
        else:
            if own:
                shutil.copyfile(migrated_database(env), database)
            else:
                commands.append(["migrate", "--no-input", "-v", "0"])
            if demo:
                commands += demo_commands
        # Another node of the same portal (demo=False): the database already has the demo.
        if commands:
            site.manage_each(*commands)
        site.serve()
        return site

    try:
        yield make
    finally:
        with teardown.deferred():
            for site in reversed(made):
                site.stop()
            report = getattr(request.node, "report_call", None)
            if report is None or report.failed:
                for site in made:
                    _log_told(site)
            try:
                problems = [problem for site in made for problem in _leftovers(site)]
            finally:
                for stores in allotted:
                    stores.release()
        assert not problems, "; ".join(problems)


def _leftovers(site: Portal) -> list[str]:
    """What a stopped portal left behind (removed here, and reported)."""
    from sessions.machines.confine import cgroup_remove, memory_cgroups_find
    from sessions.machines.host import cgroup_parent_name, install_id_derive, machine_lease_names

    problems = []
    leftovers = processes_naming(site.run_dir)
    for pid in leftovers:
        os.kill(pid, 9)
    if leftovers:
        problems.append(f"QEMU processes outlived the portal: {leftovers}")
    run_left = sorted(p.name for p in site.run_dir.iterdir()) if site.run_dir.exists() else []
    if run_left:
        problems.append(f"run directories outlived the portal: {run_left}")
    leases = machine_lease_names(site.root / "leases")
    if leases:
        problems.append(f"machine leases outlived the portal: {leases}")
    install = site.env.get("PORTAL_INSTALL_ID") or install_id_derive(site.root)
    cgroups = memory_cgroups_find(parent_name=cgroup_parent_name(install))
    if cgroups is not None and cgroups.parent.exists():
        problems.append(f"the install's cgroup outlived the portal: {cgroups.parent}")
        for name in cgroups.names():
            cgroup_remove(cgroups.path_for(name))
        cgroups.parent_remove()
    shutil.rmtree(site.root, ignore_errors=True)
    return problems


@pytest.fixture
def portal_data_dir() -> Path | None:
    """Where the served portal keeps its data (None: a fresh directory); tests override it."""
    return None


@pytest.fixture
def portal(portal_make: PortalFactory, portal_settings: dict[str, str],
           portal_data_dir: Path | None) -> Portal:
    return portal_make(portal_settings, data_dir=portal_data_dir)


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


# --- The services of a node (deploy/services.py): PostgreSQL, Redis, nginx -------


NginxFactory = Callable[..., "Nginx"]


@pytest.fixture
def nginx_make(services_root: Path) -> Iterator[NginxFactory]:
    """Put a private nginx (deploy/nginx/portal.conf) in front of a served portal,
    with the portal's own body limits; stopped afterwards."""
    from deploy.services import Nginx, port_free

    made: list[Nginx] = []

    def make(site: Portal, *more: Portal) -> Nginx:
        """nginx in front of site (and of more nodes of the same portal)."""
        from django.conf import settings

        request_max = int(site.env.get("PORTAL_REQUEST_MAX_BYTES", settings.PORTAL_REQUEST_MAX_BYTES))
        import_max = int(site.env.get("PORTAL_IMPORT_MAX_BYTES", settings.PORTAL_IMPORT_MAX_BYTES))
        service = Nginx(name="nginx", directory=services_root / f"nginx-{len(made)}", port=port_free(),
                        nodes=[f"127.0.0.1:{each.port}" for each in (site, *more)],
                        request_max_bytes=request_max,
                        upload_max_bytes=import_max + 1024 * 1024,
                        upload_path_prefix=settings.PORTAL_UPLOAD_PATH_PREFIX)
        made.append(service)
        service.start()
        return service

    try:
        yield make
    finally:
        with teardown.deferred():
            for service in reversed(made):
                service_stopped(service)
