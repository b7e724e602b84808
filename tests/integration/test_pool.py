"""The warm pool: machines resumed from an exhibit's start state and paused before
anyone asks, handed to visitors at Start and Reset."""
from __future__ import annotations

import asyncio
import datetime
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from portal.models import StartState
from sessions.machines.prepare import StartCondition
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_2048, FREEDOS_GAMES, ExhibitFactory, display_watch, visitor
from tests.support.guest import wait_for_text
from tests.support.processes import processes_naming
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 60
AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)


@pytest.fixture
async def pool_broker(settings: Any, portal_dirs: Path) -> Any:
    """The broker of a node that keeps two machines per exhibit in its pool."""
    from sessions.node.broker import get_broker

    settings.PORTAL_POOL_SIZE = 2
    settings.PORTAL_MAX_SESSIONS = getattr(settings, "POOL_TEST_CAPACITY", 6)
    instance = await get_broker()
    yield instance
    await instance.shutdown()


@pytest.fixture
async def games(pool_broker: Any, exhibit_create: ExhibitFactory) -> Any:
    # A floppy exhibit: software emulation (floppy boot fails under nested KVM).
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, AT_PROMPT)
    pool_broker.pool.wake()
    return exhibit


async def pooled(broker: Any, slug: str, count: int) -> list[int]:
    """Wait until the pool holds `count` machines of the exhibit; their QEMU pids."""
    async def holds() -> bool:
        return bool(broker.pool.sizes().get(slug, 0) == count)
    await eventually(holds, timeout_s=TIMEOUT_S)
    return sorted(entry.machine.pid for machines in broker.pool._machines.values()
                  for entry in machines if entry.slug == slug)


def pool_pids(broker: Any) -> set[int]:
    return {entry.machine.pid for machines in broker.pool._machines.values() for entry in machines}


async def start(slug: str = "games") -> tuple[Any, dict[str, Any]]:
    browser = visitor()
    response = await browser.post(f"/api/exhibits/{slug}/sessions")
    assert response.status_code == 201, response.content
    return browser, response.json()


async def guest_time(machine: Any, rfb: Any) -> datetime.datetime:
    """What DOS says the time is (its TIME command), as today's local time."""
    await rfb.type_text("time\n")
    screen = await wait_for_text(machine, rfb, "Enter new time", timeout_s=30)
    await rfb.type_text("\n")
    said = re.findall(r"Current time is\s+(\d+):(\d+):(\d+)\.\d+\s*([ap])", screen)[-1]
    hour = int(said[0]) % 12 + (12 if said[3] == "p" else 0)
    now = datetime.datetime.now()
    return now.replace(hour=hour, minute=int(said[1]), second=int(said[2]), microsecond=0)


async def test_it_hands_a_visitor_a_pooled_machine_running_on_a_fresh_overlay_at_the_hosts_time(
    pool_broker: Any, games: Any
) -> None:
    waiting = await pooled(pool_broker, "games", 2)
    # Paused long enough that a clock left as it was would show it.
    await eventually(lambda: _true_after(min(entry.made_at for entry in
                                             pool_broker.pool._machines[games.pk]) + 10),
                     timeout_s=30, interval_s=0.5)
    # Each waits with its first viewer's VNC connection open, greeting not yet read.
    for entry in pool_broker.pool._machines[games.pk]:
        assert await vnc_clients(entry.machine) == 1
    pooled_dirs = {entry.machine.pid: entry.machine.run_dir
                   for entry in pool_broker.pool._machines[games.pk]}
    browser, session = await start()
    rfb = await display_watch(browser, session["vnc_path"])
    try:
        machine = pool_broker.machine(session["id"])
        assert machine.pid in waiting
        # The visitor's display is that connection, not one more beside it.
        assert await vnc_clients(machine) == 1
        assert machine.display_connection_take() is None
        assert (await machine.execute("query-status"))["status"] == "running"
        # Its own overlay over the warm layer, in the visit's run directory.
        row = await VisitorSession.objects.aget(id=session["id"])
        overlay = Path(row.run_dir) / "disk.qcow2"
        info = json.loads(subprocess.run(["qemu-img", "info", "--force-share", "--output=json",
                                          str(overlay)], capture_output=True, check=True).stdout)
        warm = (await StartState.objects.aget(exhibit=games)).warm_path
        assert info["backing-filename"] == warm
        # The visit adopted the machine's own run directory as it was in the pool,
        # named by the machine alone: nothing on its command line names the pool.
        assert machine.run_dir == Path(row.run_dir) == pooled_dirs[machine.pid]
        assert re.fullmatch(r"m-[0-9a-f]{16}", machine.run_dir.name)
        command_line = " ".join(psutil.Process(machine.pid).cmdline())
        assert "pool" not in command_line
        assert f"{machine.run_dir}/vnc.sock" in command_line
        # The prompt, at once: nothing booted.
        assert "A:\\>" in await machine.text_screen()
        said = await guest_time(machine, rfb)
        assert abs((said - datetime.datetime.now()).total_seconds()) < 4, \
            f"DOS says {said:%H:%M:%S}, the host {datetime.datetime.now():%H:%M:%S}"
        # Its time limit counts from the start, not from when it was pooled.
        shown = (await browser.get(f"/api/sessions/{session['id']}")).json()
        expires = datetime.datetime.fromisoformat(shown["expires_at"].replace("Z", "+00:00"))
        left = (expires - datetime.datetime.now(datetime.UTC)).total_seconds()
        assert left > pool_broker.config.session_max_s - 30
    finally:
        await rfb.close()
        await browser.delete(f"/api/sessions/{session['id']}")


async def vnc_clients(machine: Any) -> int:
    """How many connections QEMU's VNC server has (a nudge's lasts only a moment)."""
    counts: list[int] = []

    async def settled() -> bool:
        counts.append(len((await machine.execute("query-vnc"))["clients"]))
        return len(counts) >= 2 and counts[-1] == counts[-2]
    await eventually(settled, timeout_s=10, interval_s=0.1)
    return counts[-1]


def _true_after(moment: float) -> Any:
    async def check() -> bool:
        return time.monotonic() >= moment
    return check()


async def test_it_never_gives_two_visitors_the_same_machine(pool_broker: Any, games: Any) -> None:
    await pooled(pool_broker, "games", 2)
    visits = [await start() for _ in range(3)]
    try:
        machines = [pool_broker.machine(session["id"]) for _, session in visits]
        await eventually(lambda: _all_running(pool_broker, [s["id"] for _, s in visits]),
                         timeout_s=TIMEOUT_S)
        machines = [pool_broker.machine(session["id"]) for _, session in visits]
        pids = [machine.pid for machine in machines]
        assert len(set(pids)) == 3
        assert len({machine.run_dir for machine in machines}) == 3
        # What visitors have is never in the pool again.
        await pooled(pool_broker, "games", 2)
        assert not set(pids) & pool_pids(pool_broker)
        first_pid = pids[0]
        await visits[0][0].delete(f"/api/sessions/{visits[0][1]['id']}")
        # Discarded, not reused, when its visit ends.
        assert not Path(f"/proc/{first_pid}").exists()
        assert first_pid not in pool_pids(pool_broker)
    finally:
        for browser, session in visits:
            await browser.delete(f"/api/sessions/{session['id']}")


async def _all_running(broker: Any, session_ids: list[str]) -> bool:
    return all(broker.machine(session_id) is not None for session_id in session_ids)


async def test_a_reset_takes_a_machine_from_the_pool(pool_broker: Any, games: Any) -> None:
    await pooled(pool_broker, "games", 2)
    browser, session = await start()
    try:
        await eventually(lambda: _all_running(pool_broker, [session["id"]]), timeout_s=TIMEOUT_S)
        await pooled(pool_broker, "games", 2)
        waiting = pool_pids(pool_broker)
        old = pool_broker.machine(session["id"])
        response = await browser.post(f"/api/sessions/{session['id']}/reset")
        assert response.status_code == 200
        assert response.json()["state"] == "running"
        new = pool_broker.machine(session["id"])
        assert new.pid in waiting
        assert new.pid != old.pid
        assert not Path(f"/proc/{old.pid}").exists()
        rfb = await display_watch(browser, session["vnc_path"])
        try:
            await rfb.type_text("echo fresh > f.txt\n")
            await wait_for_text(new, rfb, "A:\\>echo fresh > f.txt", timeout_s=30)
        finally:
            await rfb.close()
    finally:
        await browser.delete(f"/api/sessions/{session['id']}")


async def test_a_stale_start_state_empties_the_pool(pool_broker: Any, games: Any) -> None:
    await pooled(pool_broker, "games", 2)
    waiting = pool_pids(pool_broker)
    discarded = [entry.machine for machines in pool_broker.pool._machines.values() for entry in machines]
    # As if the portal's QEMU had been upgraded since the state was saved.
    await StartState.objects.filter(exhibit=games).aupdate(key="qemu=6.2.0;made elsewhere")
    browser, session = await start()
    try:
        await eventually(lambda: _all_running(pool_broker, [session["id"]]), timeout_s=TIMEOUT_S)
        machine = pool_broker.machine(session["id"])
        assert machine.pid not in waiting
        # Booted cold: no prompt yet.
        assert "A:\\>" not in await machine.text_screen()

        async def emptied() -> bool:
            return not pool_pids(pool_broker) and not any(
                Path(f"/proc/{pid}").exists() for pid in waiting)
        await eventually(emptied, timeout_s=TIMEOUT_S)
        # Their waiting VNC connections were closed with them.
        assert [machine.display_connection_take() for machine in discarded] == [None, None]
        health = (await visitor().get("/healthz")).json()
        assert health["pool"]["exhibits"] == {}
        assert health["pool"]["size"] == 2
    finally:
        await browser.delete(f"/api/sessions/{session['id']}")


@pytest.mark.parametrize("pool_capacity", [3])
async def test_pools_never_take_a_visitors_place(
    settings: Any, pool_capacity: int, portal_dirs: Path, exhibit_create: ExhibitFactory
) -> None:
    from sessions.node.broker import get_broker

    settings.PORTAL_POOL_SIZE = 2
    settings.PORTAL_MAX_SESSIONS = pool_capacity
    settings.PORTAL_LIVE_PER_ADDRESS = 10
    broker = await get_broker()
    run_root = portal_dirs / "run"
    seen: list[int] = []

    async def watch() -> None:
        while True:
            seen.append(len(processes_naming(run_root)))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    visits: list[tuple[Any, dict[str, Any]]] = []
    try:
        games = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
        await exhibit_create(FREEDOS_2048, slug="cold", accelerator="tcg")
        await exhibit_prepare(games, AT_PROMPT)
        broker.pool.wake()
        await pooled(broker, "games", 2)
        # Cold starts of another exhibit take the pool's places, one by one.
        for _ in range(pool_capacity):
            visits.append(await start("cold"))
            await eventually(lambda: _all_running(broker, [s["id"] for _, s in visits]),
                             timeout_s=TIMEOUT_S)
        assert broker.pool.count() == 0
        # Full: the next visitor waits in line, the pool does not come back meanwhile.
        browser, session = await start("games")
        visits.append((browser, session))
        assert session["state"] == "queued"
        assert broker.pool.count() == 0
        # A place frees: the one in line gets it before any pooled machine.
        await visits[0][0].delete(f"/api/sessions/{visits[0][1]['id']}")
        await eventually(lambda: _all_running(broker, [session["id"]]), timeout_s=TIMEOUT_S)
    finally:
        watcher.cancel()
        for browser, session in visits:
            await browser.delete(f"/api/sessions/{session['id']}")
        await broker.shutdown()
    assert max(seen) <= pool_capacity, f"{max(seen)} QEMU processes at once"


async def test_pools_come_back_after_the_node_restarts(pool_broker: Any, games: Any) -> None:
    from sessions.node.broker import get_broker

    before = set(await pooled(pool_broker, "games", 2))
    await pool_broker.shutdown()
    assert not any(Path(f"/proc/{pid}").exists() for pid in before)
    assert pool_broker.pool.count() == 0
    import sessions.node.broker as module

    module._broker = None
    again = await get_broker()
    try:
        after = set(await pooled(again, "games", 2))
        assert not after & before
        health = (await visitor().get("/healthz")).json()
        assert health["pool"] == {"size": 2, "machines": 2, "exhibits": {"games": 2}}
        # The staff's page of live visits shows the node's pool too.
        from django.contrib.auth.models import User

        user = await User.objects.acreate_user("pool-staff", password="x", is_staff=True,
                                               is_superuser=True)
        staff = visitor()
        await staff.aforce_login(user)
        page = (await staff.get("/admin/visits/visitorsession/live/")).content.decode()
        shown = page[page.index('id="warm-pool"'):]
        assert "per exhibit: 2" in shown
        assert "games: 2" in shown
    finally:
        await again.shutdown()
