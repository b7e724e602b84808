"""Shared fixtures: private directories per test, the broker, exhibits, clients.

Every test that runs machines gets its own short run directory; afterwards
the fixture fails the test if any QEMU process, socket or overlay it made is
still there. A test run stopped by SIGTERM, SIGINT or SIGHUP ends as on Ctrl-C
(deploy/teardown.py): its fixtures stop what they started, in reverse order.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from deploy import teardown
from sessions.machines.machine import kvm_usable
from tests.support.hosted_guest import hosted_copy
from tests.support.processes import processes_naming

if TYPE_CHECKING:
    from deploy.services import PostgreSQL, Redis, Service

REPO = Path(__file__).resolve().parent.parent
# The FreeDOS floppies the tests boot, kept in the repository with their licence
# and checksums (tests/guests/README.md); PORTAL_GUESTS_DIR points elsewhere.
GUESTS = Path(os.environ.get("PORTAL_GUESTS_DIR", REPO / "tests" / "guests"))
FREEDOS_2048 = GUESTS / "freedos-2048.img"
FREEDOS_2048_SHA256 = "89b96984b9470916b7e8eccb445ae4d512a945d7333eaf07d7aabd2368167a20"
FREEDOS_GAMES_SOURCE = GUESTS / "freedos-games.img"
FREEDOS_GAMES_SHA256 = "3bb19897b734d638a2f8c855bc1105648a97f88df8f498a1fee7e5d304272613"
# What the tests boot: that floppy as a portal hosts it, halting while DOS waits
# (tests/support/hosted_guest.py).
FREEDOS_GAMES = hosted_copy(FREEDOS_GAMES_SOURCE, REPO / "build" / "guests")
DEMO_IMAGE = REPO / "build" / "demo.img"

KVM = kvm_usable()
needs_kvm = pytest.mark.skipif(not KVM, reason="needs a usable /dev/kvm; this host has none")


# This run's configuration (pytest_configure): the xdist controller passes a stop signal on.
_config: pytest.Config | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    teardown.handlers_install()
    # Only the xdist controller (or a run without workers): its workers start after it.
    if not hasattr(config, "workerinput"):
        catalogues_compile()


def catalogues_compile() -> None:
    """Compile each translation whose .mo is missing or older than its .po, as
    `make setup` does, so that a run straight after editing a catalogue tests it."""
    for source in (REPO / "locale").glob("*/LC_MESSAGES/*.po"):
        compiled = source.with_suffix(".mo")
        if compiled.exists() and compiled.stat().st_mtime >= source.stat().st_mtime:
            continue
        partial = compiled.with_suffix(f".mo.{os.getpid()}")
        subprocess.run(["msgfmt", "--check", "-o", str(partial), str(source)], check=True)
        os.replace(partial, compiled)


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Under pytest-xdist a stop signal may reach the controller alone (`kill PID`), which
    runs no test: it passes it on to its workers, which tear their fixtures down before
    the controller's shutdown kills them (10 s later)."""
    controller = (_config is not None and not hasattr(_config, "workerinput")
                  and _config.getoption("dist", "no") != "no")
    if controller and isinstance(excinfo.value, teardown.Stopping):
        for worker in psutil.Process().children():
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.send_signal(excinfo.value.signum)


@pytest.fixture
def portal_dirs(settings: Any) -> Iterator[Path]:
    # Short, so socket paths stay under the unix limit.
    root = Path(tempfile.mkdtemp(prefix="pt-", dir="/tmp"))
    # An install of its own (its own identity, leases and cgroups), not the checkout's var/.
    settings.PORTAL_DATA_DIR = root
    settings.PORTAL_RUN_DIR = root / "run"
    settings.PORTAL_IMAGE_DIR = root / "images"
    settings.PORTAL_THUMBNAIL_DIR = root / "thumbnails"
    settings.PORTAL_RECORDING_DIR = root / "images" / "recordings"
    # The warm pool is on, as in every install (PORTAL_POOL_SIZE's default): a test
    # about starting without it says so.
    yield root
    from sessions.machines.host import install_id, lease_dir, machine_lease_names, memory_cgroups

    with teardown.deferred():
        run = root / "run"
        leftovers = sorted(p.name for p in run.iterdir()) if run.exists() else []
        leases = machine_lease_names(lease_dir())
        cgroups = memory_cgroups(install_id())
        cgroup_left = cgroups is not None and cgroups.parent.exists()
        pids = processes_naming(run)
        for pid in pids:
            os.kill(pid, 9)
        shutil.rmtree(root, ignore_errors=True)
    assert not pids, f"QEMU processes left running: {pids}"
    assert not leftovers, f"run directories left behind: {leftovers}"
    assert not leases, f"machine leases left behind: {leases}"
    assert not cgroup_left, f"the install's cgroup parent was left behind: {cgroups}"


@pytest.fixture
async def broker(portal_dirs: Path) -> AsyncIterator[Any]:
    from sessions.node.broker import get_broker

    instance = await get_broker()
    yield instance
    with teardown.deferred():
        await instance.shutdown()


@pytest.fixture(scope="session", autouse=True)
def database_connections_closed(django_db_setup: Any, django_db_blocker: Any) -> Iterator[None]:
    """Close the connection that async tests' ORM calls opened in asgiref's worker
    thread, before the test database is dropped (PostgreSQL refuses to drop a
    database someone is still connected to)."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        asyncio.run(sync_to_async(connections.close_all)())


@pytest.fixture(scope="session")
def demo_image() -> Path:
    """The demo guest, built from this repository's source if it is not built yet."""
    if not DEMO_IMAGE.exists():
        subprocess.run(["bash", str(REPO / "demo" / "build.sh"), str(DEMO_IMAGE)], check=True)
    return DEMO_IMAGE


ExhibitFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def exhibit_create(portal_dirs: Path) -> ExhibitFactory:
    """Import an image as a master (the curators' checked path) and publish an exhibit on it
    (awaitable)."""
    from portal.images import disk_image_import
    from portal.models import Exhibit

    def create(image: Path, *, slug: str, boot: str = "floppy", published: bool = True,
               title: str | None = None, accelerator: str = "auto") -> Exhibit:
        disk = disk_image_import(image, name=image.name, agent="tests")
        return Exhibit.objects.create(
            slug=slug, title=title or slug, image=disk, boot=boot, published=published,
            year=1994, publisher="Test", accelerator=accelerator,
        )

    return sync_to_async(create)


def visitor() -> AsyncClient:
    """A browser of its own: its own cookie jar, so its own visitor id."""
    return AsyncClient()


def ws_communicator(client: AsyncClient, path: str, *, origin: str | None = "http://testserver",
                    subprotocols: list[str] | None = None) -> WebsocketCommunicator:
    from portal.asgi import application

    cookie = "; ".join(f"{key}={morsel.value}" for key, morsel in client.cookies.items())
    headers = [(b"host", b"testserver"), (b"cookie", cookie.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return WebsocketCommunicator(application, path, headers=headers,
                                 subprotocols=subprotocols or ["binary"])


async def display_watch(client: AsyncClient, vnc_path: str, *, timeout_s: float = 60) -> Any:
    """The machine's display as a visitor's noVNC has it: connected, first update
    received, and kept current in the background."""
    from tests.support.rfb import CommunicatorTransport, RfbClient

    communicator = ws_communicator(client, vnc_path)
    connected, _ = await communicator.connect(timeout=30)
    assert connected, "the display WebSocket was refused"
    rfb = RfbClient(CommunicatorTransport(communicator))
    async with asyncio.timeout(timeout_s):
        await rfb.handshake()
        await rfb.first_update()
    rfb.start()
    return rfb


# --- The services of a node (deploy/services.py): PostgreSQL and Redis ------------


@pytest.fixture
def services_root() -> Iterator[Path]:
    """A private directory for one test's services. Others may pass through it (not
    list it): PostgreSQL and Redis run as their packages' users when the tests are root,
    each in a 0700 directory of its own inside."""
    with teardown.Stops() as stops:
        root = stops.directory("ps-")
        os.chmod(root, 0o711)
        yield root


def service_stopped(service: Service) -> None:
    """Stop a service by its pid; it must leave no process behind."""
    pid = service.pid
    assert service.stop(), f"{service.name} did not stop on its signal and was killed"
    left = processes_naming(service.directory)
    for stray in left:
        os.kill(stray, 9)
    assert not left, f"{service.name} left processes: {left}"
    if pid is not None:
        assert not Path(f"/proc/{pid}").exists(), f"{service.name} (pid {pid}) outlived its stop"


@pytest.fixture
def postgresql(services_root: Path) -> Iterator[PostgreSQL]:
    """A private PostgreSQL on a free loopback port, stopped (by its pid) afterwards."""
    from deploy.services import PostgreSQL, port_free

    service = PostgreSQL(name="postgresql", directory=services_root / "postgresql", port=port_free())
    try:
        service.start()
        yield service
    finally:
        with teardown.deferred():
            service_stopped(service)


@pytest.fixture
def redis(services_root: Path) -> Iterator[Redis]:
    """A private Redis on a free loopback port, stopped (by its pid) afterwards."""
    from deploy.services import Redis, port_free

    service = Redis(name="redis", directory=services_root / "redis", port=port_free())
    try:
        service.start()
        yield service
    finally:
        with teardown.deferred():
            service_stopped(service)
