"""The demo exhibit through the portal, as a visitor's noVNC drives it.

Everything is asserted from the framebuffer the visitor would see: the window
that opens, the pointer where it was put, the text that was typed, and saved
text that survives a reboot of the same overlay but not a new visitor.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from tests.conftest import ExhibitFactory, display_watch, visitor
from tests.support.guest import sha256_file
from tests.support.rfb import RfbClient
from tests.support.screen import BLACK, Font, screen_shows

pytestmark = pytest.mark.django_db(transaction=True)

BOOT_TIMEOUT_S = 60
TEAL = (0, 168, 168)
VGA_WHITE = (255, 255, 255)
KEYSYM_F2 = 0xFFBF
KEYSYM_CONTROL_L, KEYSYM_ALT_L, KEYSYM_DELETE = 0xFFE3, 0xFFE9, 0xFFFF
ABOUT_ICON = (256, 102)
ABOUT_TITLE_BAR = (540, 222)
ABOUT_CLOSE_BOX = (617, 229)  # [x] at the right end of the About window's title bar
NOTEPAD_TEXT = (258, 440)  # pixel rows of the Notepad window's text


def desktop_shown(rfb: RfbClient) -> bool:
    return rfb.width == 640 and rfb.height == 480 and rfb.pixel(630, 300) == TEAL


class DemoVisit:
    def __init__(self, broker: Any, browser: AsyncClient, session: dict[str, Any],
                 rfb: RfbClient) -> None:
        self.broker, self.browser, self.session, self.rfb = broker, browser, session, rfb
        self.font: Font | None = None

    async def desktop(self) -> Font:
        await self.rfb.wait_for(desktop_shown, timeout_s=BOOT_TIMEOUT_S)
        # The desktop's background may be drawn before the guest has copied its font
        # into RAM (just after a reboot, on a busy host): wait for the font too.
        machine = self.broker.machine(self.session["id"])
        async with asyncio.timeout(BOOT_TIMEOUT_S):
            while True:
                try:
                    self.font = await Font.from_guest(machine)
                    return self.font
                except AssertionError:
                    await asyncio.sleep(0.1)

    async def sees(self, text: str, rows: tuple[int, int], *,
                   ink: tuple[int, int, int] = BLACK, timeout_s: float = 15) -> None:
        font = self.font or await self.desktop()
        top, bottom = rows
        await self.rfb.wait_for(
            lambda rfb: screen_shows(rfb, font, text, ink=ink, top=top, bottom=bottom),
            timeout_s=timeout_s,
        )

    def shows(self, text: str, rows: tuple[int, int]) -> bool:
        assert self.font is not None
        return screen_shows(self.rfb, self.font, text, ink=BLACK, top=rows[0], bottom=rows[1])

    async def click(self, x: int, y: int) -> None:
        await self.rfb.pointer(x, y)
        await self.rfb.pointer(x, y, buttons=1)
        await self.rfb.pointer(x, y)

    async def close(self) -> None:
        await self.rfb.close()
        await self.browser.delete(f"/api/sessions/{self.session['id']}")


async def open_demo(broker: Any) -> DemoVisit:
    browser = visitor()
    response = await browser.post("/api/exhibits/demo/sessions")
    assert response.status_code == 201
    rfb = await display_watch(browser, response.json()["vnc_path"], timeout_s=BOOT_TIMEOUT_S)
    return DemoVisit(broker, browser, response.json(), rfb)


@pytest.fixture
async def demo(broker: Any, exhibit_create: ExhibitFactory, demo_image: Path) -> Any:
    return await exhibit_create(demo_image, slug="demo", boot="hdd", title="Portal demo")


async def test_it_opens_and_closes_the_clicked_window_and_draws_what_is_typed(broker: Any, demo: Any) -> None:
    visit = await open_demo(broker)
    try:
        await visit.desktop()
        assert visit.rfb.pixel(*ABOUT_TITLE_BAR) == TEAL
        await visit.click(*ABOUT_ICON)
        await visit.rfb.wait_for(lambda rfb: rfb.pixel(*ABOUT_TITLE_BAR) != TEAL, timeout_s=15)
        await visit.sees("About", (216, 240), ink=VGA_WHITE)
        await visit.click(*ABOUT_CLOSE_BOX)
        await visit.rfb.wait_for(lambda rfb: rfb.pixel(*ABOUT_TITLE_BAR) == TEAL, timeout_s=15)

        await visit.rfb.type_text("Hello museum")
        await visit.sees("Hello museum", NOTEPAD_TEXT)
    finally:
        await visit.close()


async def test_it_puts_the_pointer_exactly_where_the_visitor_points(broker: Any, demo: Any) -> None:
    visit = await open_demo(broker)
    try:
        await visit.desktop()
        for x, y in [(600, 440), (470, 450), (600, 440)]:
            await visit.rfb.pointer(x, y)
            # The arrow's tip is drawn on the very pixel pointed at; the desktop
            # just above and to the left of it is untouched.
            await visit.rfb.wait_for(
                lambda rfb, x=x, y=y: rfb.pixel(x, y) != TEAL
                and rfb.pixel(x - 1, y) == TEAL and rfb.pixel(x, y - 1) == TEAL,
                timeout_s=15,
            )
        assert visit.rfb.pixel(470, 450) == TEAL, "the pointer left no trace where it was"
    finally:
        await visit.close()


async def test_it_follows_the_pointer_with_the_ps2_mouse_when_vmport_is_off(
    broker: Any, exhibit_create: ExhibitFactory, demo_image: Path
) -> None:
    exhibit = await exhibit_create(demo_image, slug="demo", boot="hdd", title="Portal demo")
    exhibit.mouse = "ps2"
    await exhibit.asave()
    visit = await open_demo(broker)
    try:
        await visit.desktop()
        # Relative moves from where the guest's pointer starts, the screen's middle.
        await visit.rfb.pointer(320, 240)
        await visit.click(*ABOUT_ICON)
        await visit.rfb.wait_for(lambda rfb: rfb.pixel(*ABOUT_TITLE_BAR) != TEAL, timeout_s=15)
        await visit.sees("About", (216, 240), ink=VGA_WHITE)
    finally:
        await visit.close()


async def test_it_keeps_saved_text_on_this_visit_only(broker: Any, demo: Any) -> None:
    master = Path(demo.image.path)
    master_sha256 = sha256_file(master)
    first = await open_demo(broker)
    try:
        await first.desktop()
        await first.sees("Welcome! Type here", NOTEPAD_TEXT)
        await first.rfb.type_text("kept by visitor one")
        await first.sees("kept by visitor one", NOTEPAD_TEXT)
        await first.rfb.press(KEYSYM_F2)
        await first.sees("Saved to disk.", (436, 470))

        # The visitor presses Ctrl+Alt+Del: the same machine reboots from its overlay.
        for keysym in (KEYSYM_CONTROL_L, KEYSYM_ALT_L, KEYSYM_DELETE):
            await first.rfb.key(keysym, down=True)
        for keysym in (KEYSYM_DELETE, KEYSYM_ALT_L, KEYSYM_CONTROL_L):
            await first.rfb.key(keysym, down=False)
        await first.rfb.wait_for(lambda rfb: not desktop_shown(rfb), timeout_s=BOOT_TIMEOUT_S)
        await first.desktop()
        await first.sees("kept by visitor one", NOTEPAD_TEXT, timeout_s=BOOT_TIMEOUT_S)

        second = await open_demo(broker)
        try:
            await second.desktop()
            await second.sees("Welcome! Type here", NOTEPAD_TEXT)
            assert not second.shows("kept by visitor one", NOTEPAD_TEXT)
        finally:
            await second.close()
    finally:
        await first.close()
    assert sha256_file(master) == master_sha256
