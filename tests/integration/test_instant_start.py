"""Instant start: visitors resume an exhibit's prepared start state instead of booting."""
from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from portal.models import StartState
from sessions.machines.prepare import StartCondition
from sessions.models import VisitorSession
from sessions.node.broker import exhibit_prepare
from tests.conftest import FREEDOS_GAMES, ExhibitFactory, display_watch, needs_kvm, visitor
from tests.support.guest import disk_file, sha256_file, wait_for_text
from tests.support.rfb import RfbClient

pytestmark = pytest.mark.django_db(transaction=True)

TIMEOUT_S = 60
AT_PROMPT = StartCondition(wait_text="A:\\>", still_s=1.0)


class Visit:
    def __init__(self, broker: Any, browser: AsyncClient, session: dict[str, Any],
                 rfb: RfbClient) -> None:
        self.broker, self.browser, self.session, self.rfb = broker, browser, session, rfb

    @property
    def machine(self) -> Any:
        return self.broker.machine(self.session["id"])

    async def command(self, line: str, *, expect: str) -> str:
        await self.rfb.type_text(line + "\n")
        return await wait_for_text(self.machine, self.rfb, expect, timeout_s=30)

    async def overlay_file(self, name: str) -> bytes | None:
        row = await VisitorSession.objects.aget(id=self.session["id"])
        return await disk_file(self.machine, Path(row.run_dir) / "disk.qcow2", name)

    async def close(self) -> None:
        await self.rfb.close()
        await self.browser.delete(f"/api/sessions/{self.session['id']}")


async def visit(broker: Any, slug: str = "games") -> Visit:
    browser = visitor()
    response = await browser.post(f"/api/exhibits/{slug}/sessions")
    assert response.status_code == 201
    session = response.json()
    return Visit(broker, browser, session, await display_watch(browser, session["vnc_path"]))


@pytest.fixture
async def games(broker: Any, exhibit_create: ExhibitFactory) -> Any:
    # A floppy exhibit: software emulation (floppy boot fails under nested KVM).
    exhibit = await exhibit_create(FREEDOS_GAMES, slug="games", accelerator="tcg")
    await exhibit_prepare(exhibit, AT_PROMPT)
    return exhibit


async def test_it_starts_at_the_prompt_and_dir_works_at_once(broker: Any, games: Any) -> None:
    exhibit = (await visitor().get("/api/exhibits/games")).json()
    assert exhibit["instant_start"] is True
    assert "Starts instantly" in (await visitor().get("/exhibits/games/")).content.decode()
    first = await visit(broker)
    try:
        # The very first screen the visitor gets is the prompt: nothing booted.
        assert "A:\\>" in await first.machine.text_screen()
        screen = await first.command("dir", expect="bytes free")
        assert "GAMES" in screen
    finally:
        await first.close()


async def test_it_keeps_visitors_apart_and_never_writes_the_layers(
    broker: Any, games: Any
) -> None:
    start = await StartState.objects.aget(exhibit=games)
    layers = {Path(games.image.path): games.image.sha256,
              Path(start.warm_path): start.warm_sha256,
              Path(start.state_path): start.state_sha256}
    one, two = await visit(broker), await visit(broker)
    try:
        await one.command("echo one > a.txt", expect="A:\\>echo one > a.txt")
        await two.command("echo two > a.txt", expect="A:\\>echo two > a.txt")
        await one.command("type a.txt", expect="type a.txt\none")
        await two.command("type a.txt", expect="type a.txt\ntwo")
        assert (await one.overlay_file("A.TXT") or b"").startswith(b"one")
        assert (await two.overlay_file("A.TXT") or b"").startswith(b"two")
    finally:
        await one.close()
        await two.close()
    for _ in range(5):
        again = await visit(broker)
        await again.command("echo more > more.txt", expect="A:\\>echo more > more.txt")
        await again.close()
    for path, digest in layers.items():
        assert sha256_file(path) == digest, f"{path.name} changed"


async def test_it_boots_cold_when_the_start_state_is_stale(broker: Any, games: Any) -> None:
    # As if the portal's QEMU had been upgraded since the state was saved.
    await StartState.objects.filter(exhibit=games).aupdate(key="qemu=6.2.0;made elsewhere")
    exhibit = (await visitor().get("/api/exhibits/games")).json()
    assert exhibit["instant_start"] is False
    start = await StartState.objects.aget(exhibit=games)
    assert start.stale
    assert "qemu=6.2.0" in start.stale_reason
    cold = await visit(broker)
    try:
        assert "A:\\>" not in await cold.machine.text_screen()
        await wait_for_text(cold.machine, cold.rfb, "A:\\>", timeout_s=TIMEOUT_S)
    finally:
        await cold.close()


async def test_it_boots_cold_when_resuming_fails(
    broker: Any, games: Any, portal_dirs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    start = await StartState.objects.aget(exhibit=games)
    broken = portal_dirs / "broken.state"
    shutil.copyfile(start.state_path, broken)
    with broken.open("r+b") as handle:
        handle.seek(64)
        handle.write(b"\xff" * 4096)
    await StartState.objects.filter(pk=start.pk).aupdate(state_path=str(broken))
    exhibit = (await visitor().get("/api/exhibits/games")).json()
    assert exhibit["instant_start"] is True, "the state still looks usable until it is tried"
    # The portal's loggers do not propagate to the root, where caplog listens; and
    # the ASGI application's import configures logging anew, so it comes first.
    import portal.asgi  # noqa: F401

    keeper_log = logging.getLogger("sessions.node.keeper")
    keeper_log.addHandler(caplog.handler)
    cold = await visit(broker)
    try:
        await wait_for_text(cold.machine, cold.rfb, "A:\\>", timeout_s=TIMEOUT_S)
        # A resume was tried first, and failed.
        # (Once each: a record may reach caplog both here and through the root logger.)
        tried = {record.getMessage() for record in caplog.records if "booting cold" in record.getMessage()}
        assert len(tried) == 1, tried
        (message,) = tried
        assert message.startswith(f"session {cold.session['id']}: resuming the start state failed"), message
    finally:
        keeper_log.removeHandler(caplog.handler)
        await cold.close()


async def test_it_resets_to_the_start_state_on_a_fresh_overlay(broker: Any, games: Any) -> None:
    first = await visit(broker)
    try:
        await first.command("echo hi > hi.txt", expect="A:\\>echo hi > hi.txt")
        old_pid = first.machine.pid
        response = await first.browser.post(f"/api/sessions/{first.session['id']}/reset")
        assert response.status_code == 200
        assert response.json()["state"] == "running"
        # The old display closes with "restart", and the page connects again.
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(TIMEOUT_S):
                await first.rfb.wait_closed()
        assert first.rfb.transport.close_code == 4412  # type: ignore[attr-defined]
        await first.rfb.transport.close()
        first.rfb = await display_watch(first.browser, first.session["vnc_path"])
        assert first.machine.pid != old_pid
        assert "A:\\>" in await first.machine.text_screen()
        await first.command("dir hi.txt", expect="File not found")
        assert await first.overlay_file("HI.TXT") is None
    finally:
        await first.close()


async def test_it_refuses_to_reset_another_browsers_session(broker: Any, games: Any) -> None:
    owner = await visit(broker)
    try:
        stranger = visitor()
        await stranger.get("/api/exhibits")
        response = await stranger.post(f"/api/sessions/{owner.session['id']}/reset")
        assert response.status_code == 404
    finally:
        await owner.close()


@needs_kvm
async def test_it_resumes_the_demo_desktop_on_kvm(
    broker: Any, exhibit_create: ExhibitFactory, demo_image: Path
) -> None:
    demo = await exhibit_create(demo_image, slug="demo", boot="hdd")
    await exhibit_prepare(demo, StartCondition(wait_graphics=True, still_s=1.0))
    resumed = await visit(broker, "demo")
    try:
        # The first frame is already the desktop, on KVM.
        assert resumed.rfb.width == 640
        assert resumed.rfb.pixel(630, 300) == (0, 168, 168)
        assert (await resumed.machine.execute("query-kvm"))["enabled"] is True
    finally:
        await resumed.close()
