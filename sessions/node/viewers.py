"""Who watches a visit: its viewers (the page's display, sound and events sockets),
the grace period their leaving starts, and its watchers (watch-link sockets,
never viewers: they keep no machine alive), which of them has the keyboard and
mouse, and their closing when the owner revokes the links.

Owns: counting viewers and watchers in and out of the keeper's visits, under
the visit's guard (`Keeper.require`), and within the limits per visit.

Must not: change a visit's phase, start or end machines (the keeper does).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path

from sessions.errors import (
    DisplayUnavailableError,
    ViewerLimitError,
    WatcherLimitError,
    WatcherUnknownError,
    gettext_noop,
)
from sessions.node.keeper import Keeper
from sessions.node.visit import MACHINE_PHASES, Phase, Visit


class Viewers:
    """The viewers and watchers of the keeper's visits."""

    def __init__(self, keeper: Keeper) -> None:
        self._keeper = keeper

    async def display_attach(self, *, session_id: str) -> Path:
        """Count a viewer in and return the VNC socket once the machine runs."""
        return await self._socket_attach(session_id, sound=False)

    def display_detach(self, *, session_id: str) -> None:
        self._socket_detach(session_id, sound=False)

    async def sound_attach(self, *, session_id: str) -> Path:
        """Count a listener in and return the VNC socket (which also carries the
        sound) once the machine runs. Listeners have a limit of their own, as
        large as the displays'; a page has one of each."""
        return await self._socket_attach(session_id, sound=True)

    def sound_detach(self, *, session_id: str) -> None:
        self._socket_detach(session_id, sound=True)

    async def _socket_attach(self, session_id: str, *, sound: bool) -> Path:
        visit = self._keeper.require(session_id, *MACHINE_PHASES)
        if (visit.listeners if sound else visit.displays) >= self._keeper.config.displays_per_session:
            raise ViewerLimitError(self._keeper.config.displays_per_session)
        if sound:
            visit.listeners += 1
        else:
            visit.displays += 1
        self.watch_attach(session_id=session_id)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keeper.config.display_wait_s):
                    await visit.until_display()
            visit.require(*MACHINE_PHASES)
            if not visit.display_ready() or visit.machine is None:
                raise DisplayUnavailableError(gettext_noop("The machine did not start in time."))
            return visit.machine.vnc_path
        except BaseException:
            self._socket_detach(session_id, sound=sound)
            raise

    def _socket_detach(self, session_id: str, *, sound: bool) -> None:
        visit = self._keeper.visit(session_id)
        if visit is not None and sound:
            visit.listeners = max(0, visit.listeners - 1)
        elif visit is not None:
            visit.displays = max(0, visit.displays - 1)
        self.watch_detach(session_id=session_id)

    def watch_attach(self, *, session_id: str) -> bool:
        """Count someone watching the visit (its display or its events) in."""
        visit = self._keeper.visit(session_id)
        if visit is None:
            return False
        visit.viewers += 1
        self._keeper.grace_cancel(visit)
        return True

    def watch_detach(self, *, session_id: str) -> None:
        visit = self._keeper.visit(session_id)
        if visit is None:
            return
        visit.viewers = max(0, visit.viewers - 1)
        if visit.viewers == 0 and visit.phase in {Phase.RUNNING, Phase.QUEUED}:
            self._keeper.grace_start(visit)

    # --- watch links -----------------------------------------------------------

    async def watcher_attach(self, *, session_id: str, watcher_id: str, revoke: Callable[[], None]) -> Path:
        """Let a watch-link socket in and return the VNC socket once the machine runs.

        A watcher is not a viewer: it never holds off the grace period after the
        owner's last page left, so watchers alone never keep a machine alive.
        `revoke` closes it when the owner revokes the links. `watcher_id` names it
        to the owner (who may hand it the keyboard and mouse) and to its own page.
        """
        visit = self._keeper.require(session_id, *MACHINE_PHASES)
        if watcher_id in visit.watchers:
            raise WatcherUnknownError(gettext_noop("A watcher of that name is watching already."))
        if len(visit.watchers) >= self._keeper.config.watchers_per_session:
            raise WatcherLimitError(self._keeper.config.watchers_per_session)
        visit.watchers[watcher_id] = revoke
        self._watchers_changed(visit)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._keeper.config.display_wait_s):
                    await visit.until(Phase.RUNNING, Phase.ENDING, Phase.ENDED)
            visit.require(*MACHINE_PHASES)
            if visit.phase is not Phase.RUNNING or visit.machine is None:
                raise DisplayUnavailableError(gettext_noop("The machine did not start in time."))
            return visit.machine.vnc_path
        except BaseException:
            self.watcher_detach(session_id=session_id, watcher_id=watcher_id)
            raise

    def watcher_detach(self, *, session_id: str, watcher_id: str) -> None:
        visit = self._keeper.visit(session_id)
        if visit is not None and visit.watchers.pop(watcher_id, None) is not None:
            if visit.control == watcher_id:
                visit.control = None
            self._watchers_changed(visit)

    def watchers_revoke(self, *, session_id: str) -> int:
        """Close every watch-link socket of the visit; returns how many there were."""
        visit = self._keeper.visit(session_id)
        if visit is None:
            return 0
        watchers, visit.watchers = visit.watchers, {}
        visit.control = None
        for revoke in watchers.values():
            revoke()
        if watchers:
            self._watchers_changed(visit)
        return len(watchers)

    def watcher_count(self, session_id: str) -> int:
        visit = self._keeper.visit(session_id)
        return len(visit.watchers) if visit is not None else 0

    def watchers(self, session_id: str) -> tuple[list[str], str | None]:
        """The visit's watchers, oldest first, and which of them has the keyboard and mouse."""
        visit = self._keeper.visit(session_id)
        return (list(visit.watchers), visit.control) if visit is not None else ([], None)

    def control_give(self, *, session_id: str, watcher_id: str) -> None:
        """Hand the keyboard and mouse to one watcher (taken from any other)."""
        visit = self._keeper.require(session_id, Phase.RUNNING)
        if watcher_id not in visit.watchers:
            raise WatcherUnknownError(gettext_noop("Nobody of that name is watching this machine."))
        visit.control = watcher_id
        self._watchers_changed(visit)

    def control_take(self, *, session_id: str) -> None:
        """Take the keyboard and mouse back from the watcher who has them."""
        visit = self._keeper.visit(session_id)
        if visit is not None and visit.control is not None:
            visit.control = None
            self._watchers_changed(visit)

    def in_control(self, session_id: str, watcher_id: str) -> bool:
        visit = self._keeper.visit(session_id)
        return visit is not None and visit.control == watcher_id

    def key_mode(self, session_id: str) -> str:
        """How the visit's keys reach its guest now ("characters" where it has no visit here)."""
        visit = self._keeper.visit(session_id)
        return visit.key_mode if visit is not None else "characters"

    def key_mode_set(self, *, session_id: str, key_mode: str) -> None:
        """Take the row's key mode (the broker wrote it) for the display sockets here."""
        visit = self._keeper.visit(session_id)
        if visit is not None:
            visit.key_mode = key_mode

    def keys_untypable(self, *, session_id: str, characters: list[str], detail: str) -> None:
        """Tell the visit's page that keys it sent type nothing on the guest's layout."""
        self._keeper.notify(session_id, {"type": "untypable", "characters": characters,
                                         "detail": detail})

    def _watchers_changed(self, visit: Visit) -> None:
        self._keeper.notify(visit.session_id, {"type": "watchers", "count": len(visit.watchers),
                                                 "watchers": list(visit.watchers),
                                                 "control": visit.control})
