"""The screen as text: one reader per running machine, shared by everyone who reads.

Owns: reading a visit's text screen for the API (`screen`) and for the pages that
listen to it over their sockets (`listen`), at most once per interval per machine
however many ask (the last read is handed to anyone who asks within the
interval), and nothing while nobody asks; each listener is told when the text
changed. The display's size, which tells a text mode from a graphics one past
what the BIOS says, is asked of QEMU's VNC server only when the BIOS's mode or
geometry changed, or once a second at most while someone listens.

Must not: read guest memory itself (`Machine.screen_cells`), decode it
(`machines.screen`), or know about sockets and HTTP: listeners are callables.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sessions.display.greeting import GreetingError, display_size
from sessions.errors import GraphicsModeError, SessionBusyError, SessionEndedError, SessionError, gettext_noop
from sessions.machines.machine import Machine, MachineError
from sessions.machines.screen import DEFAULT_CODE_PAGE, Screen, screen_from
from sessions.node.keeper import Keeper
from sessions.node.visit import Phase
from sessions.tasks import task_new

logger = logging.getLogger(__name__)

Listener = Callable[[dict[str, Any]], Awaitable[None]]
# How long the display's size is trusted while the BIOS's mode stays the same.
DISPLAY_SIZE_TRUSTED_S = 1.0
# How long a read may take before the listeners' loop gives up on this one.
READ_TIMEOUT_S = 5.0


@dataclass
class _Reader:
    machine: Machine
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    screen: Screen | None = None
    read_at: float = -1e9
    display: tuple[int, int] | None = None
    display_key: tuple[int, int, int] | None = None
    display_at: float = -1e9
    listeners: dict[int, Listener] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None


def screen_message(screen: Screen, before: Screen | None) -> dict[str, Any]:
    """The events socket's `screen_text` message: the whole text (a screen is at most
    132x60 characters) and which rows changed since `before`, or that it is graphical."""
    if not screen.text:
        return {"type": "screen_text", "mode": "graphics", "width": screen.width,
                "height": screen.height}
    old = before.lines if before is not None and before.text else ()
    changed = [row for row, line in enumerate(screen.lines) if row >= len(old) or old[row] != line]
    return {"type": "screen_text", "mode": "text", "columns": screen.columns, "rows": screen.rows,
            "cursor": list(screen.cursor or (0, 0)), "lines": list(screen.lines),
            "changed": changed}


class ScreenReaders:
    """The node's text-screen readers, one per running visit that someone reads."""

    def __init__(self, keeper: Keeper, *, interval_s: Callable[[], float]) -> None:
        self._keeper = keeper
        self._interval_s = interval_s
        self._readers: dict[str, _Reader] = {}
        self._next_id = 0
        # Reads of guest memory made, for the bench: none while nobody reads.
        self.reads = 0

    def _reader(self, session_id: str) -> tuple[_Reader, int]:
        """The visit's reader under the guard every action takes, and its code page."""
        visit = self._keeper.require(session_id, Phase.RUNNING)
        machine = visit.machine
        if not isinstance(machine, Machine):
            raise SessionBusyError(gettext_noop("This machine cannot do that."))
        for gone in [other for other in self._readers if self._keeper.visit(other) is None]:
            self.close(gone)
        reader = self._readers.get(session_id)
        if reader is None or reader.machine is not machine:
            # A new visit, or a reset gave it a new machine: its own reader.
            listeners = reader.listeners if reader is not None else {}
            task = reader.task if reader is not None else None
            reader = _Reader(machine=machine, listeners=listeners, task=task)
            self._readers[session_id] = reader
        code_page = int(getattr(visit.exhibit, "code_page", DEFAULT_CODE_PAGE) or DEFAULT_CODE_PAGE)
        return reader, code_page

    async def screen(self, *, session_id: str) -> Screen:
        """The visit's screen, read now or within the last interval."""
        reader, code_page = self._reader(session_id)
        async with reader.lock:
            if reader.screen is not None and time.monotonic() - reader.read_at < self._interval_s():
                return reader.screen
            try:
                video, cells = await reader.machine.screen_cells()
            except MachineError as error:
                logger.warning("session %s: the text screen could not be read: %s", session_id, error)
                raise SessionBusyError(
                    gettext_noop("The machine's screen could not be read; try again.")) from error
            self.reads += 1
            now = time.monotonic()
            key = (video.mode, video.columns, video.rows)
            if key != reader.display_key or now - reader.display_at >= DISPLAY_SIZE_TRUSTED_S:
                try:
                    reader.display = await display_size(reader.machine.vnc_path,
                                                        timeout_s=reader.machine.qmp_timeout_s)
                except GreetingError as error:
                    # The BIOS's word alone, then.
                    logger.warning("session %s: %s", session_id, error)
                    reader.display = None
                reader.display_key, reader.display_at = key, now
            reader.screen = screen_from(video, cells, code_page=code_page, display=reader.display)
            reader.read_at = now
            return reader.screen

    async def text(self, *, session_id: str) -> Screen:
        """The visit's text screen; `GraphicsModeError` while the guest shows graphics."""
        screen = await self.screen(session_id=session_id)
        if not screen.text:
            raise GraphicsModeError(width=screen.width, height=screen.height)
        return screen

    def listen(self, *, session_id: str, listener: Listener) -> Callable[[], None]:
        """Tell listener the screen now and whenever its text changes, until the
        returned function is called. The visit must be running."""
        reader, _ = self._reader(session_id)
        self._next_id += 1
        number = self._next_id
        reader.listeners[number] = listener
        if reader.task is None or reader.task.done():
            reader.task = task_new(self._follow(session_id), name=f"screen-text-{session_id}")

        def stop() -> None:
            current = self._readers.get(session_id)
            if current is None or current.listeners.pop(number, None) is None:
                return
            if not current.listeners:
                if current.task is not None:
                    current.task.cancel()
                del self._readers[session_id]

        return stop

    async def _follow(self, session_id: str) -> None:
        """Read the screen once per interval while anyone listens; tell them of changes."""
        before: Screen | None = None
        told: set[int] = set()
        while True:
            reader = self._readers.get(session_id)
            if reader is None or not reader.listeners:
                return
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    screen = await self.screen(session_id=session_id)
            except SessionEndedError:
                return
            except (SessionError, TimeoutError):
                # Resetting, or a read that failed: the next interval tries again.
                await asyncio.sleep(self._interval_s())
                continue
            reader = self._readers.get(session_id)
            if reader is None:
                return
            # A new listener is told the whole screen; the others what changed.
            changed = before is None or screen != before
            message = screen_message(screen, before)
            full = screen_message(screen, None)
            for number, listener in list(reader.listeners.items()):
                if changed or number not in told:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await listener(message if number in told else full)
                    told.add(number)
            before = screen
            await asyncio.sleep(self._interval_s())

    def close(self, session_id: str | None = None) -> list[asyncio.Task[None]]:
        """Stop one visit's reader (it ended), or every reader (the node shuts down);
        returns their tasks, cancelled, for the caller to wait for."""
        stopped = []
        for number in [session_id] if session_id is not None else list(self._readers):
            reader = self._readers.pop(number, None)
            if reader is not None and reader.task is not None:
                reader.task.cancel()
                stopped.append(reader.task)
        return stopped
