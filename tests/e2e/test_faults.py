"""Faults a visitor can meet, injected for real: a QEMU killed, the server killed."""
from __future__ import annotations

import contextlib
import os
import re
import select
import signal
from typing import Any

from sessions.machines.machine import process_alive
from tests.e2e.conftest import Portal
from tests.support.processes import processes_naming


def start_machine(portal: Portal, browser: Any) -> Any:
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.goto(portal.url + "/exhibits/demo/")
    page.get_by_role("button", name="Start").click()
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    return page


def test_a_visitor_sees_a_killed_machine_stop_and_starts_a_new_one(
    portal: Portal, browser: Any
) -> None:
    page = start_machine(portal, browser)
    first_url = page.url
    pid, _ = portal.machine(first_url.rstrip("/").rsplit("/", 1)[1])
    os.kill(pid, signal.SIGKILL)
    page.get_by_text("The machine stopped.").wait_for(timeout=10_000)
    assert page.locator("#state").get_attribute("data-state") == "ended"
    page.get_by_role("button", name="Start a new machine").click()
    page.wait_for_url(lambda url: url != first_url and "/sessions/" in url)
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.get_by_role("button", name="End").click()
    page.get_by_text("This machine has ended.").wait_for(timeout=15_000)


def test_after_a_server_crash_the_restarted_portal_leaves_nothing_behind(
    portal: Portal, browser: Any
) -> None:
    page = start_machine(portal, browser)
    pid, run_dir = portal.machine(page.url.rstrip("/").rsplit("/", 1)[1])
    before = set(portal.run_dir.iterdir())
    portal.crash()
    # The machine runs as its own user, so it does not die with the portal.
    survived = process_alive(pid)
    portal.serve()  # answering /healthz means the reaper has swept
    if survived:
        # A pidfd becomes readable when the process has ended.
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(pid)
            try:
                select.select([pidfd], [], [], 10)
            finally:
                os.close(pidfd)
    assert not process_alive(pid), f"the orphaned QEMU {pid} survived the restart"
    # Nothing of the crashed portal's machines is left: the visit's and its warm pool's
    # (the restarted portal makes a pool of its own).
    for gone in before:
        assert not gone.exists(), f"{gone.name} outlived the crash"
        assert processes_naming(gone) == []
    assert run_dir in before
    page.reload()
    page.get_by_text("The server restarted and this machine was lost.").wait_for(timeout=10_000)
    assert page.locator("#state").get_attribute("data-state") == "ended"
    assert survived or os.geteuid() != 0, "a root portal's machines run as their own users"
