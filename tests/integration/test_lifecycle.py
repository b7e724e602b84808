"""Capacity, the waiting line, time limits, faults and the reaper, against real QEMU.

Each fault is injected for real: a QEMU killed with SIGKILL, a run directory on
a full or read-only filesystem, a machine no broker owns.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from portal.models import Exhibit
from portal.profile import MachineProfile
from sessions.machines.machine import Machine, process_alive
from sessions.machines.overlay import overlay_create, run_dir_create
from sessions.models import VisitorSession
from sessions.node.broker import Broker, get_broker
from sessions.node.visit import Phase
from tests.conftest import FREEDOS_2048, ExhibitFactory, needs_kvm, visitor, ws_communicator
from tests.support.boot_floppy import GUESTS, boot_floppy_build
from tests.support.filesystem import fill, small_filesystem
from tests.support.rfb import CommunicatorTransport, RfbClient
from tests.support.wait import eventually

pytestmark = pytest.mark.django_db(transaction=True)

BrokerFactory = Callable[..., Awaitable[Broker]]
SHIFT = 0xFFE1


@pytest.fixture
async def make_broker(settings: Any, portal_dirs: Path) -> AsyncIterator[BrokerFactory]:
    """The portal's broker with the given settings (PORTAL_… = value)."""
    made: list[Broker] = []

    async def make(**overrides: Any) -> Broker:
        for name, value in overrides.items():
            setattr(settings, name, value)
        broker = await get_broker()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.shutdown()


@pytest.fixture
async def freedos(exhibit_create: ExhibitFactory) -> Any:
    # Software emulation: FreeDOS floppies do not boot under this host's nested KVM.
    return await exhibit_create(FREEDOS_2048, slug="freedos", accelerator="tcg")


async def start(client: AsyncClient) -> dict[str, Any]:
    response = await client.post("/api/exhibits/freedos/sessions")
    assert response.status_code == 201, response.content
    return response.json()  # type: ignore[no-any-return]


async def events(client: AsyncClient, session_id: str) -> WebsocketCommunicator:
    communicator = ws_communicator(client, f"/ws/sessions/{session_id}/events", subprotocols=[])
    connected, _ = await communicator.connect(timeout=30)
    assert connected
    return communicator


async def next_event(communicator: WebsocketCommunicator, kind: str, *, timeout_s: float = 30,
                     **fields: Any) -> dict[str, Any]:
    """The next event of this type (and these field values), skipping others."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await communicator.receive_output(timeout=timeout_s)
            assert message["type"] == "websocket.send", message
            event = json.loads(message["text"])
            if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                return event  # type: ignore[no-any-return]


async def test_it_lines_up_visitors_past_capacity_and_tells_them_their_place(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    broker = await make_broker(PORTAL_MAX_SESSIONS=1, PORTAL_QUEUE_MAX=2, PORTAL_LIVE_PER_ADDRESS=10)
    first_visitor, second_visitor, third_visitor, fourth_visitor = (visitor() for _ in range(4))
    first = await start(first_visitor)
    assert first["state"] == "starting"
    assert first["queue_position"] is None
    second = await start(second_visitor)
    third = await start(third_visitor)
    assert (second["state"], second["queue_position"]) == ("queued", 1)
    assert (third["state"], third["queue_position"]) == ("queued", 2)
    assert third["queue_wait_s"] >= second["queue_wait_s"] > 0

    full = await fourth_visitor.post("/api/exhibits/freedos/sessions")
    assert full.status_code == 503
    assert full.json()["error"] == "capacity"
    assert full.json()["detail"]
    assert int(full["Retry-After"]) > 0

    second_page = await events(second_visitor, second["id"])
    third_page = await events(third_visitor, third["id"])
    assert (await next_event(second_page, "state"))["queue_position"] == 1
    assert (await next_event(third_page, "state"))["queue_position"] == 2
    # A waiting visitor has no display yet.
    waiting_display = ws_communicator(second_visitor, second["vnc_path"])
    assert (await waiting_display.connect(timeout=30))[0]
    assert (await waiting_display.receive_output(timeout=30))["code"] == 4409

    await first_visitor.delete(f"/api/sessions/{first['id']}")
    await next_event(second_page, "state", state="running")
    await next_event(third_page, "state", queue_position=1)
    assert broker.active_count == 1
    assert sum(visit.phase is Phase.QUEUED for visit in broker.keeper.visits()) == 1

    await second_visitor.delete(f"/api/sessions/{second['id']}")
    assert (await next_event(second_page, "ended"))["reason"] == "visitor"
    await next_event(third_page, "state", state="running")
    # The fourth visitor now finds room in the line.
    fourth = await start(fourth_visitor)
    assert (fourth["state"], fourth["queue_position"]) == ("queued", 1)
    for page in (second_page, third_page):
        await page.disconnect()


async def test_it_allows_one_live_session_per_browser_and_limits_starts(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    await make_broker(PORTAL_STARTS_PER_BROWSER=2)
    browser = visitor()
    for _ in range(2):
        session = await start(browser)
        again = await browser.post("/api/exhibits/freedos/sessions")
        assert again.status_code == 409
        assert again.json()["id"] == session["id"]
        assert (await browser.delete(f"/api/sessions/{session['id']}")).status_code == 204
    limited = await browser.post("/api/exhibits/freedos/sessions")
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert 0 < int(limited["Retry-After"]) <= 60
    # Another browser is not held back by this one.
    other = await start(visitor())
    assert other["state"] == "starting"


async def test_it_warns_before_the_idle_end_and_input_keeps_the_machine(
    make_broker: BrokerFactory, freedos: Any, portal_dirs: Path
) -> None:
    await make_broker(PORTAL_IDLE_S=3.0, PORTAL_WARNING_S=2.0)
    browser = visitor()
    session = await start(browser)
    page = await events(browser, session["id"])
    display = ws_communicator(browser, session["vnc_path"])
    assert (await display.connect(timeout=30))[0]
    rfb = RfbClient(CommunicatorTransport(display))
    await rfb.handshake()
    await rfb.first_update()
    rfb.start()  # a viewer that keeps asking for updates is not a visitor's input

    warning = await next_event(page, "warning")
    assert warning["reason"] == "idle"
    assert 1 <= warning["seconds_left"] <= 2
    await rfb.press(SHIFT)
    assert (await next_event(page, "warning_cleared"))["reason"] == "idle"
    # Answering the warning on the page counts too.
    await next_event(page, "warning", reason="idle")
    await page.send_to(text_data=json.dumps({"type": "active"}))
    await next_event(page, "warning_cleared")

    await next_event(page, "warning", reason="idle")
    ended = await next_event(page, "ended")
    assert ended["reason"] == "idle"
    assert "Nobody used the machine" in ended["detail"]
    record = await VisitorSession.objects.aget(id=session["id"])
    assert (record.state, record.ended_reason) == ("ended", "idle")
    assert not (portal_dirs / "run" / session["id"]).exists()
    await rfb.stop()
    await page.disconnect()


async def test_it_ends_a_visit_at_its_time_limit_after_a_warning(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    await make_broker(PORTAL_SESSION_MAX_S=3.0, PORTAL_WARNING_S=2.0)
    browser = visitor()
    session = await start(browser)
    page = await events(browser, session["id"])
    running = await next_event(page, "state", state="running")
    expires = datetime.fromisoformat(running["expires_at"]).timestamp()
    warning = await next_event(page, "warning")
    assert warning["reason"] == "timeout"
    assert warning["seconds_left"] <= 2
    # Input all along does not stretch the time limit: it ends when it said it would.
    async def active() -> None:
        while True:
            await page.send_to(text_data=json.dumps({"type": "active"}))
            await asyncio.sleep(0.3)

    keeping_busy = asyncio.create_task(active())
    try:
        ended = await next_event(page, "ended")
    finally:
        keeping_busy.cancel()
    assert ended["reason"] == "timeout"
    assert abs(time.time() - expires) < 2.0, "ended at its time limit, not later"
    response = (await browser.get(f"/api/sessions/{session['id']}")).json()
    assert (response["state"], response["ended_reason"]) == ("ended", "timeout")
    await page.disconnect()


async def test_it_notices_a_killed_qemu_and_lets_the_visitor_start_again(
    make_broker: BrokerFactory, freedos: Any, portal_dirs: Path
) -> None:
    broker = await make_broker()
    browser = visitor()
    session = await start(browser)
    page = await events(browser, session["id"])
    await next_event(page, "state", state="running")
    pid = (await VisitorSession.objects.aget(id=session["id"])).pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    ended = await next_event(page, "ended")
    assert ended["reason"] == "crashed"
    assert "stopped unexpectedly" in ended["detail"]
    assert not (portal_dirs / "run" / session["id"]).exists()
    assert broker.active_count == 0
    # The page's "Start a new machine" is a new session for the same exhibit.
    again = await start(browser)
    assert again["id"] != session["id"]
    await page.disconnect()


async def test_the_reaper_ends_what_no_broker_owns_every_interval(
    make_broker: BrokerFactory, freedos: Any, portal_dirs: Path
) -> None:
    broker = await make_broker(PORTAL_REAPER_INTERVAL_S=0.2)
    browser = visitor()
    kept = await start(browser)
    page = await events(browser, kept["id"])
    await next_event(page, "state", state="running")

    # What an earlier portal process left: a row that says running and its QEMU.
    # While it is being set up, the reaper is told it is live, so that it finds
    # the whole orphan at once.
    orphan_id = "orphan" + "0" * 26
    owns = broker.keeper.is_live
    broker.keeper.is_live = lambda session_id: session_id == orphan_id or owns(session_id)  # type: ignore[method-assign]
    orphan = await VisitorSession.objects.acreate(
        id=orphan_id, exhibit=freedos, owner="gone", state="running",
        run_dir=str(broker.config.machines.run_root / orphan_id),
    )
    run_dir = run_dir_create(root=broker.config.machines.run_root, name=orphan.id)
    await overlay_create(base_path=Path(freedos.image.path), base_format=freedos.image.format,
                         overlay_path=run_dir / "disk.qcow2", qemu_img="qemu-img", timeout_s=30)
    machine = Machine(MachineProfile(), run_dir=run_dir, disk_path=run_dir / "disk.qcow2",
                      qemu_binary="qemu-system-i386", accelerator="tcg", start_timeout_s=20,
                      qmp_timeout_s=5, stop_timeout_s=5,
                      confinement=broker.launcher.confinement_for(memory_mb=16, run_as=(1800000999,) * 2))
    await machine.start()
    stray = broker.config.machines.run_root / "stray-overlay"
    stray.mkdir()
    (stray / "disk.qcow2").write_bytes(b"x")
    del broker.keeper.is_live  # the broker's own answer again
    try:
        async with asyncio.timeout(30):
            assert await machine.wait() == -signal.SIGKILL

        async def cleaned() -> bool:
            record = await VisitorSession.objects.aget(id=orphan.id)
            return not run_dir.exists() and not stray.exists() and record.state == "ended"

        await eventually(cleaned, timeout_s=30)
        record = await VisitorSession.objects.aget(id=orphan.id)
        assert record.ended_reason == "server"
        if broker.config.machines.cgroups is not None:
            assert not any(name.startswith(orphan.id) for name in broker.config.machines.cgroups.names())
        # The broker's own visitor was not touched.
        assert (await VisitorSession.objects.aget(id=kept["id"])).state == "running"
        assert broker.machine(kept["id"]) is not None
    finally:
        await machine.stop()
        await page.disconnect()


async def ended_session(browser: AsyncClient, session_id: str, broker: Broker) -> dict[str, Any]:
    assert await broker.keeper.wait_ended(session_id=session_id, timeout_s=30)
    return (await browser.get(f"/api/sessions/{session_id}")).json()  # type: ignore[no-any-return]


async def test_it_tells_the_visitor_when_the_disk_is_full_and_leaves_nothing(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    with small_filesystem() as mount_point:
        run_root = mount_point / "run"
        run_root.mkdir()
        filler = fill(mount_point)
        broker = await make_broker(PORTAL_RUN_DIR=run_root)
        browser = visitor()
        session = await start(browser)
        ended = await ended_session(browser, session["id"], broker)
        assert ended["ended_reason"] == "server"
        assert "disk is full" in ended["detail"]
        assert list(run_root.iterdir()) == []
        # Room again: the next visitor gets a machine.
        filler.unlink()
        other = visitor()
        second = await start(other)
        await broker.viewers.display_attach(session_id=second["id"])
        broker.viewers.display_detach(session_id=second["id"])
        await other.delete(f"/api/sessions/{second['id']}")
        assert list(run_root.iterdir()) == []


async def test_it_ends_a_running_visit_whose_disk_fills_up_and_says_why(
    make_broker: BrokerFactory, exhibit_create: ExhibitFactory, demo_image: Path
) -> None:
    from tests.integration.test_demo import KEYSYM_F2, open_demo

    await exhibit_create(demo_image, slug="demo", boot="hdd", accelerator="tcg")
    with small_filesystem(size="4m") as mount_point:
        run_root = mount_point / "run"
        run_root.mkdir()
        broker = await make_broker(PORTAL_RUN_DIR=run_root)
        try:
            visit = await open_demo(broker)
            await visit.desktop()
            page = await events(visit.browser, visit.session["id"])
            await next_event(page, "state", state="running")
            filler = fill(mount_point)
            # Notepad's Save writes to the hard disk: its overlay needs room the
            # host's disk no longer has, and QEMU pauses the guest.
            await visit.rfb.type_text("lost")
            await visit.rfb.press(KEYSYM_F2)
            ended = await next_event(page, "ended", timeout_s=60)
            assert ended["reason"] == "server"
            assert "ran out of disk space" in ended["detail"]
            assert list(run_root.iterdir()) == []
            await visit.rfb.stop()
            await page.disconnect()
            # With room again, the next visitor gets a machine as usual.
            filler.unlink()
            neighbour = visitor()
            second = (await neighbour.post("/api/exhibits/demo/sessions")).json()
            await broker.viewers.display_attach(session_id=second["id"])
            broker.viewers.display_detach(session_id=second["id"])
            await neighbour.delete(f"/api/sessions/{second['id']}")
        finally:
            await broker.shutdown()  # nothing may hold the filesystem when it is unmounted


async def test_it_tells_the_visitor_when_the_run_directory_is_read_only(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    with small_filesystem("ro") as mount_point:
        broker = await make_broker(PORTAL_RUN_DIR=mount_point)
        browser = visitor()
        session = await start(browser)
        ended = await ended_session(browser, session["id"], broker)
        assert ended["ended_reason"] == "server"
        assert "its disk is read-only" in ended["detail"]
        assert list(mount_point.iterdir()) == []


async def test_it_closes_an_oversized_display_message_and_the_machine_lives_on(
    make_broker: BrokerFactory, freedos: Any, settings: Any
) -> None:
    await make_broker()
    browser, neighbour = visitor(), visitor()
    session = await start(browser)
    other = await start(neighbour)
    display = ws_communicator(browser, session["vnc_path"])
    assert (await display.connect(timeout=30))[0]
    assert (await display.receive_output(timeout=30))["type"] == "websocket.send"
    await display.send_to(bytes_data=bytes(settings.PORTAL_WS_MAX_MESSAGE_BYTES + 1))
    while (message := await display.receive_output(timeout=10))["type"] != "websocket.close":
        pass
    assert message["code"] == 4413
    for browser_, session_ in ((browser, session), (neighbour, other)):
        record = (await browser_.get(f"/api/sessions/{session_['id']}")).json()
        assert record["state"] in {"starting", "running"}

    page = await events(browser, session["id"])
    await next_event(page, "state")
    for bad in ("not json", json.dumps({"type": "reset-everything"}), "[1, 2]", "x" * 10000,
                json.dumps({"type": "screen_text", "listen": "yes"})):
        await page.send_to(text_data=bad)
        error = await next_event(page, "error")
        assert error["error"] == "bad_message"
        assert error["detail"]
    # The socket is still open and still works.
    await page.send_to(text_data=json.dumps({"type": "active"}))
    await browser.delete(f"/api/sessions/{session['id']}")
    assert (await next_event(page, "ended"))["reason"] == "visitor"
    await page.disconnect()


async def test_machines_run_as_their_own_unprivileged_users_with_a_memory_limit(
    make_broker: BrokerFactory, freedos: Any
) -> None:
    broker = await make_broker()
    assert os.geteuid() == 0, "the portal runs as root here, so QEMU must not"
    browsers = [visitor(), visitor()]
    sessions = [await start(browser) for browser in browsers]
    uids = set()
    for session in sessions:
        await broker.viewers.display_attach(session_id=session["id"])
        broker.viewers.display_detach(session_id=session["id"])
        pid = (await VisitorSession.objects.aget(id=session["id"])).pid
        assert pid is not None
        assert process_alive(pid)
        status = Path(f"/proc/{pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        real, effective, saved, filesystem = (int(value) for value in uid_line.split()[1:])
        assert real == effective == saved == filesystem >= broker.config.machines.uid_base  # type: ignore[operator]
        uids.add(real)
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert "0" not in groups.split()[1:]
        limits = broker.launcher.confinement_for(memory_mb=16, run_as=None)
        cgroups = broker.config.machines.cgroups
        if cgroups is not None:
            cgroup = next(
                cgroups.path_for(name) for name in cgroups.names()
                if str(pid) in (cgroups.path_for(name) / "cgroup.procs").read_text().split()
            )
            # Named by the machine's run directory, which the visit's row records.
            run_dir = Path((await VisitorSession.objects.aget(id=session["id"])).run_dir)
            assert cgroup.name.startswith(run_dir.name + ".")
            assert int((cgroup / cgroups.limit_file).read_text()) == limits.memory_bytes
        else:
            assert f"{limits.memory_bytes}" in Path(f"/proc/{pid}/limits").read_text().replace(" ", "")
    assert len(uids) == 2, "two machines never share a user"
    health = (await browsers[0].get("/healthz")).json()
    assert health["qemu_runs_as"] == "per-machine uid"
    cgroups = broker.config.machines.cgroups
    expected = f"cgroup-v{cgroups.version}" if cgroups else "rlimit-as"
    assert health["memory_limit"] == expected
    for browser, session in zip(browsers, sessions, strict=True):
        await browser.delete(f"/api/sessions/{session['id']}")
    if broker.config.machines.cgroups is not None:
        assert broker.config.machines.cgroups.names() == []


@needs_kvm
async def test_a_machine_keeps_kvm_after_dropping_root(
    make_broker: BrokerFactory, exhibit_create: ExhibitFactory, demo_image: Path
) -> None:
    broker = await make_broker(PORTAL_ACCELERATOR="kvm")
    await exhibit_create(demo_image, slug="demo", boot="hdd")
    browser = visitor()
    response = await browser.post("/api/exhibits/demo/sessions")
    session = response.json()
    await broker.viewers.display_attach(session_id=session["id"])
    broker.viewers.display_detach(session_id=session["id"])
    machine = broker.machine(session["id"])
    assert machine is not None
    assert machine.pid is not None
    status = Path(f"/proc/{machine.pid}/status").read_text()
    assert next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1] != "0"
    assert await machine.execute("query-kvm") == {"enabled": True, "present": True}
    await browser.delete(f"/api/sessions/{session['id']}")


async def test_a_machine_that_passes_its_memory_limit_is_stopped_and_its_visitor_told(
    make_broker: BrokerFactory, exhibit_create: ExhibitFactory, tmp_path: Path
) -> None:
    """The hog guest writes to all of its 128 MiB; with no room for QEMU's own
    memory on top, the kernel stops it, and the page says why."""
    broker = await make_broker(PORTAL_QEMU_MEMORY_OVERHEAD_MB=0)
    assert broker.config.machines.cgroups is not None, "this host limits machines' memory with cgroups"
    exhibit = await exhibit_create(boot_floppy_build(GUESTS / "hog.asm", tmp_path), slug="hog",
                                   accelerator="tcg")  # a floppy boot, as for FreeDOS
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(memory_mb=128)
    browser = visitor()
    response = await browser.post("/api/exhibits/hog/sessions")
    assert response.status_code == 201, response.content
    session = response.json()
    page = await events(browser, session["id"])
    ended = await next_event(page, "ended", timeout_s=60)
    assert ended["reason"] == "crashed"
    assert ended["detail"] == ("The machine needed more memory than it may use on this server, "
                               "so it was stopped.")
    row = await VisitorSession.objects.aget(id=session["id"])
    assert (row.state, row.ended_reason) == ("ended", "crashed")
    assert broker.config.machines.cgroups.names() == []
    await page.disconnect()
