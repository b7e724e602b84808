"""Installs side by side on one host, and machines started beside a serving portal.

Each install's reaper (ticking every 0.2 s here) must end only its own
install's orphans, never a machine another install or another process of the
same install owns. Every install here is a real Daphne with its own data
directory, hence its own identity.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from sessions.machines.host import machine_lease_take
from sessions.machines.machine import process_alive
from tests.conftest import REPO
from tests.e2e.conftest import Portal, PortalFactory
from tests.support.portal_http import PortalVisitor
from tests.support.processes import processes_naming
from tests.support.wait import wait_until

# A reaper tick every 0.2 s; a visit lasts although no page watches it.
SETTINGS = {"PORTAL_REAPER_INTERVAL_S": "0.2", "PORTAL_GRACE_S": "600"}
ROUNDS = 3


@contextlib.contextmanager
def orphan(portal: Portal) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A QEMU of this install that nobody owns any more, as a dead owner leaves it.

    It is owned (leased) while it is set up, so that the reaper finds all of it
    at once; on leaving the block its owner lets go.
    """
    name = f"orphan-{secrets.token_hex(4)}"
    lease = machine_lease_take(name=name, directory=portal.root / "leases")
    run_dir = portal.run_dir / name
    run_dir.mkdir(mode=0o700, parents=True)
    process = subprocess.Popen(
        ["qemu-system-i386", "-nodefaults", "-accel", "tcg", "-m", "16", "-display", "none",
         "-vnc", f"unix:{run_dir}/vnc.sock"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: (run_dir / "vnc.sock").exists() or process.poll() is not None,
                   timeout_s=30, what="the orphan's QEMU to listen")
        lease.release()
        yield process, run_dir
    finally:
        lease.release()
        if process.poll() is None:
            process.kill()
        process.wait()


def reaper_rounds(portals: list[Portal], *, check: Callable[[], None]) -> None:
    """ROUNDS times: give every install an orphan and wait until its reaper ended it.

    An orphan ended proves its install's reaper ran after it appeared, so every
    reaper runs at least ROUNDS times; `check()` runs after each round.
    """
    for _ in range(ROUNDS):
        with contextlib.ExitStack() as stack:
            orphans = [(portal, stack.enter_context(orphan(portal))) for portal in portals]
            for portal, (process, run_dir) in orphans:
                assert process.wait(timeout=30) == -signal.SIGKILL, "the reaper ends its orphan"
                wait_until(lambda run_dir=run_dir: not run_dir.exists(),  # type: ignore[misc]
                           timeout_s=30, what=f"{portal.url}'s reaper to remove {run_dir.name}")
        check()


def test_two_installs_on_one_host_keep_each_others_machines_through_reaper_intervals(
    portal_make: PortalFactory,
) -> None:
    first, second = portal_make(SETTINGS, prepare=False), portal_make(SETTINGS, prepare=False)
    identities = {PortalVisitor(site.url).request("GET", "/healthz")[1]["install"]
                  for site in (first, second)}
    assert len(identities) == 2, "each data directory is an install of its own"
    machines: list[tuple[Portal, PortalVisitor, str, int]] = []
    for site in (first, second):
        for _ in range(2):
            visitor = PortalVisitor(site.url)
            session = visitor.session_start("demo")
            pid, _ = site.machine(session["id"])
            machines.append((site, visitor, session["id"], pid))

    def all_running() -> None:
        for site, visitor, session_id, pid in machines:
            _, session = visitor.request("GET", f"/api/sessions/{session_id}")
            assert session["state"] == "running", f"{site.url} lost {session_id}: {session}"
            assert process_alive(pid), f"QEMU {pid} of {site.url} was ended"

    reaper_rounds([first, second], check=all_running)
    for _, visitor, session_id, _ in machines:
        assert visitor.session_end(session_id) == 204


def test_a_prepare_beside_the_serving_portal_outlives_its_reaper(
    portal_make: PortalFactory,
) -> None:
    site = portal_make(SETTINGS, prepare=False)
    log = site.root / "prepare.log"
    with log.open("wb") as output:
        prepare = subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "prepare_exhibit", "demo",
             "--wait-graphics", "--still", "1"],
            env=site.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        def prepare_qemu() -> list[int]:
            """The prepare's QEMU (its -vnc names its socket; qemu-img's argv does not)."""
            found = []
            for pid in processes_naming(site.root):
                with contextlib.suppress(OSError):
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    if any(b"/prepare-" in arg and b"/vnc.sock" in arg for arg in argv):
                        found.append(pid)
            return found

        wait_until(lambda: prepare_qemu() or prepare.poll() is not None, timeout_s=60,
                   what="the prepare's QEMU")
        assert prepare.poll() is None, log.read_text()
        (qemu,) = prepare_qemu()
        # Held still while the portal's reaper runs several times: the prepare spans them all.
        os.kill(prepare.pid, signal.SIGSTOP)
        try:
            reaper_rounds([site], check=lambda: None)
            assert process_alive(qemu), "the serving portal's reaper ended the prepare's machine"
        finally:
            os.kill(prepare.pid, signal.SIGCONT)
        assert prepare.wait(timeout=180) == 0, log.read_text()
    finally:
        if prepare.poll() is None:
            prepare.kill()
            prepare.wait()
    assert "Prepared demo" in log.read_text()
    _, exhibit = PortalVisitor(site.url).request("GET", "/api/exhibits/demo")
    assert exhibit["instant_start"] is True
