"""What a compromised machine could read: nothing of the portal's data directory.

A portal is set up as `make run` sets it up (its ./var made by the portal
inside a checkout that everyone may read), serves a visit, and every private
file and directory is tried as the running machine's own uid.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Portal
from tests.support.portal_http import PortalVisitor

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="only a root portal runs machines under uids of their own, and only root can "
           "become one to try; CI runs as root",
)
DATABASE = "portal.sqlite3"


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A directory like a repository checkout: 0755, so any user may look inside."""
    root = Path(tempfile.mkdtemp(prefix="pc-", dir="/tmp"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def portal_data_dir(checkout: Path) -> Path:
    # Not made here: the portal makes its own ./var, as on a first `make run`.
    return checkout / "var"


def as_user(uid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run argv as uid with its own gid and no supplementary groups, as QEMU runs after -runas."""
    return subprocess.run(argv, user=uid, group=uid, extra_groups=[], capture_output=True,
                          text=True, errors="replace", timeout=30, stdin=subprocess.DEVNULL)


def assert_denied(uid: int, *argv: str) -> None:
    result = as_user(uid, *argv)
    said = (f"uid {uid} ran {' '.join(argv)}: exit code {result.returncode}, "
            f"stdout {result.stdout[:200]!r}, stderr {result.stderr!r}")
    assert result.returncode != 0, said
    assert "Permission denied" in result.stderr, said


def machine_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(uid_line.split()[1])


def private_files(root: Path, run_dir: Path) -> list[Path]:
    """The database with whatever journal SQLite has now, the secret key, the masters and
    start states, and the visit's own overlay and log."""
    files = [*sorted(root.glob(f"{DATABASE}*")), root / "secret_key",
             *sorted((root / "images").glob("*.qcow2")),
             *sorted((root / "images" / "start").glob("*/*")),
             run_dir / "disk.qcow2", run_dir / "qemu.log"]
    for path in files:
        assert path.is_file(), f"{path} is missing: the test no longer looks at what the portal keeps"
    return files


def private_directories(root: Path, run_dir: Path) -> list[Path]:
    directories = [root, root / "images", root / "images" / "start", root / "run",
                   root / "leases", run_dir]
    for path in directories:
        assert path.is_dir(), f"{path} is missing: the test no longer looks at what the portal keeps"
    return directories


def assert_modes_private(root: Path) -> None:
    for path in [root, root / "images", root / "secret_key", *root.glob(f"{DATABASE}*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {mode:04o}"


async def display_shows_the_desktop(visitor: PortalVisitor, vnc_path: str) -> None:
    rfb = await visitor.display(vnc_path)
    assert (rfb.width, rfb.height) == (640, 480)
    assert rfb.lit_pixels() > 10000, "the demo's desktop, not a black screen"
    await rfb.close()


def test_it_keeps_the_data_directory_from_a_running_machines_uid(
    portal: Portal, checkout: Path
) -> None:
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")
    # The machine booted from its master (through the start state's warm layer)
    # and shows its desktop, although its uid can reach none of those files.
    asyncio.run(display_shows_the_desktop(visitor, session["vnc_path"]))
    pid, run_dir = portal.machine(session["id"])
    uid = machine_uid(pid)
    assert uid != 0

    # The uid can look around the checkout: what stops it below is the portal's modes.
    assert as_user(uid, "ls", os.fspath(checkout)).returncode == 0
    for path in private_files(portal.root, run_dir):
        assert_denied(uid, "cat", os.fspath(path))
    for path in private_directories(portal.root, run_dir):
        assert_denied(uid, "ls", os.fspath(path))
    assert_modes_private(portal.root)

    asyncio.run(display_shows_the_desktop(visitor, session["vnc_path"]))
    assert visitor.session_end(session["id"]) == 204


def test_it_makes_an_older_installs_data_directory_private_when_it_starts(
    portal: Portal, checkout: Path
) -> None:
    portal.stop()
    # The modes an older version left: a listable data directory, a database
    # anyone may read, masters in a listable store.
    for path in [portal.root, portal.root / "images", portal.root / "images" / "start"]:
        path.chmod(0o755)
    # On the production services (deploy.services) the database is PostgreSQL's, not a file here.
    database = portal.root / DATABASE
    on_sqlite = not portal.env.get("PORTAL_DATABASE_URL")
    if on_sqlite:
        database.chmod(0o644)

    portal.serve()

    assert_modes_private(portal.root)
    uid = int(portal.env.get("PORTAL_QEMU_UID_BASE", "1800000000")) + 1
    assert as_user(uid, "ls", os.fspath(checkout)).returncode == 0
    if on_sqlite:
        assert_denied(uid, "cat", os.fspath(database))
    assert_denied(uid, "ls", os.fspath(portal.root / "images"))
    visitor = PortalVisitor(portal.url)
    session = visitor.session_start("demo")
    asyncio.run(display_shows_the_desktop(visitor, session["vnc_path"]))
    assert visitor.session_end(session["id"]) == 204
