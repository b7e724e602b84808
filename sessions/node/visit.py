"""A visit's life: its phase, and the one function that changes it.

Owns: `Phase` (where a visit is in its life), the table of moves allowed
between phases, and `Visit`, the node's record of one live visit (its
machine, viewers, tasks, leases and clocks). Every change of phase goes
through `Visit.move()`, which refuses a move the table does not allow; code
elsewhere asks `visit.phase`, never a flag.

                                   RESTORING
                                       ⇅
    QUEUED ──▶ STARTING ──▶ RUNNING ⇄ RESETTING
       │           │           │          │      (and RESTORING)
       └───────────┴───────────┴──────────┴──▶ ENDING ──▶ ENDED

Must not: start tasks, touch processes or the database, or decide when a visit
moves; the keeper does (in the style of `qemu.qmp`'s `Runstate`).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sessions.errors import SessionBusyError, SessionEndedError, SessionError, gettext_noop
from sessions.models import VisitorSession

if TYPE_CHECKING:
    from sessions.machines.host import Lease
    from sessions.machines.printout import Printout
    from sessions.machines.sandbox import Sandbox
    from sessions.node.keeper import KeptMachine

logger = logging.getLogger(__name__)


class Phase(Enum):
    """Where a visit is in its life."""

    #: Waiting in line for a free machine; no machine, no run directory.
    QUEUED = "queued"
    #: Its machine is being made and started.
    STARTING = "starting"
    #: Its machine runs; viewers see it.
    RUNNING = "running"
    #: Its machine is being replaced by a fresh one at the start state.
    RESETTING = "resetting"
    #: Its machine is being brought back to one of the visit's checkpoints (same QEMU).
    RESTORING = "restoring"
    #: Being ended: machine stopped, files deleted, the end recorded.
    ENDING = "ending"
    #: Over; nothing of it is left on the node.
    ENDED = "ended"


#: Why a visit ended (the API's `ended_reason`): the row's own vocabulary, one enum.
EndReason = VisitorSession.EndedReason


#: Every move a visit may make. A visit may end from every phase before ENDING;
#: one in line leaves this node at once when another node takes it from the line.
MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.QUEUED: frozenset({Phase.STARTING, Phase.ENDING, Phase.ENDED}),
    Phase.STARTING: frozenset({Phase.RUNNING, Phase.ENDING}),
    Phase.RUNNING: frozenset({Phase.RESETTING, Phase.RESTORING, Phase.ENDING}),
    Phase.RESETTING: frozenset({Phase.RUNNING, Phase.ENDING}),
    Phase.RESTORING: frozenset({Phase.RUNNING, Phase.ENDING}),
    Phase.ENDING: frozenset({Phase.ENDED}),
    Phase.ENDED: frozenset(),
}

#: The phases a visit may begin in: in line, or straight to a machine.
FIRST_PHASES = frozenset({Phase.QUEUED, Phase.STARTING})

#: Phases in which a visit is alive and may still be ended.
LIVE_PHASES = frozenset({Phase.QUEUED, Phase.STARTING, Phase.RUNNING, Phase.RESETTING,
                         Phase.RESTORING})

#: Phases with a machine, or one being made: what a display may wait for.
MACHINE_PHASES = LIVE_PHASES - {Phase.QUEUED}

State = VisitorSession.State
#: The row's state (the API's `state`) for each phase: the one translation between
#: the node's vocabulary and the database's.
ROW_STATES: dict[Phase, str] = {
    Phase.QUEUED: State.QUEUED,
    Phase.STARTING: State.STARTING,
    Phase.RUNNING: State.RUNNING,
    Phase.RESETTING: State.RUNNING,
    Phase.RESTORING: State.RUNNING,
    Phase.ENDING: State.RUNNING,
    Phase.ENDED: State.ENDED,
}

#: Why a live visit cannot do what needs another phase, for the person who asked.
BUSY: dict[Phase, str] = {
    Phase.QUEUED: gettext_noop("This visit is still waiting in line for a machine."),
    Phase.STARTING: gettext_noop("The machine is still starting; try again in a moment."),
    Phase.RUNNING: gettext_noop("The machine is running."),
    Phase.RESETTING: gettext_noop("The machine is being reset; try again in a moment."),
    Phase.RESTORING: gettext_noop("The machine is going back to a checkpoint; try again in a moment."),
}


class VisitStateError(SessionError):
    """A move the table of moves does not allow: a bug, never a visitor's doing."""

    def __init__(self, session_id: str, current: Phase | None, wanted: Phase) -> None:
        if current is None:
            super().__init__(f"visit {session_id} cannot begin {wanted.value}")
        else:
            super().__init__(f"visit {session_id} cannot move from {current.value} to {wanted.value}")
        self.session_id = session_id
        self.current = current
        self.wanted = wanted


@dataclass(eq=False)
class Visit:
    """One live visit on this node: waiting in line, starting, running or ending."""

    session_id: str
    # The catalogue's record (an Exhibit); the keeper hands it to its machine factory.
    exhibit: Any = None
    # QUEUED (in line) or STARTING (a machine is free): the only phases a visit begins in.
    first: InitVar[Phase] = Phase.QUEUED
    machine: KeptMachine | None = None
    # Everyone watching (display, sound and events sockets), the display sockets
    # alone, and the sound sockets alone.
    viewers: int = 0
    displays: int = 0
    listeners: int = 0
    # The watch-link sockets (never counted among the viewers: they keep no
    # machine alive) by their names, each the call that closes it when the
    # owner revokes; and the one the owner handed the keyboard and mouse, if any.
    watchers: dict[str, Callable[[], None]] = field(default_factory=dict)
    control: str | None = None
    # How the visitor's keys reach the guest ("characters" or "positions"), as the
    # row says: the display sockets read it at each key.
    key_mode: str = "characters"
    # Held while keys are typed for the visitor, so two pastes never interleave.
    typing: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    launch_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None
    grace_task: asyncio.Task[None] | None = None
    finish_task: asyncio.Task[None] | None = None
    # Which machine is current: bumped at every reset.
    generation: int = 0
    # The current machine's sandbox (checkpoints, visitors' disks): a new one per machine.
    sandbox: Sandbox | None = None
    # A saved visit to go on from (sessions.machines.saving.SavedVisit), until its
    # first machine is made; a reset starts from the exhibit's start state.
    resume: Any = None
    # What it printed (sessions.node.prints): outlives a reset, goes with the visit.
    printout: Printout | None = None
    # Its recording while one is being made (sessions.node.recordings): outlives a reset.
    recording: Any = None
    # Held from before the row exists until after every trace is gone: what tells
    # every reaper of the install that this session is owned. (Each of its machines
    # holds leases of its own: its run directory's and its uid's.)
    lease: Lease | None = None
    # Keeper's clock: when the first machine ran, the latest visitor input,
    # and the end of the longest visit.
    started: float | None = None
    last_input: float = 0.0
    expires: float | None = None
    # The warning the page shows now: "idle", "timeout" or None.
    warning: str | None = None
    # Keeper's clock when its machine began to start (its Start, or its turn in
    # line), and whether a display has shown its first screen since.
    launch_began: float | None = None
    first_frame_shown: bool = False
    _phase: Phase = field(init=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    def __post_init__(self, first: Phase) -> None:
        if first not in FIRST_PHASES:
            raise VisitStateError(self.session_id, None, first)
        self._phase = first

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def live(self) -> bool:
        """Not ending or ended."""
        return self._phase in LIVE_PHASES

    def require(self, *phases: Phase) -> Visit:
        """The guard of every action on a visit (as `qemu.qmp`'s `@require(Runstate)`):
        the visit itself if it is in one of `phases`; else `SessionEndedError` once it
        is ending or over, or `SessionBusyError` saying which phase it is in."""
        if not self.live:
            raise SessionEndedError()
        if self._phase not in phases:
            raise SessionBusyError(BUSY[self._phase])
        return self

    @property
    def run_dir(self) -> Path | None:
        """Where the visit's files are: its current machine's run directory (None
        before it has one). Everything asks here, or the machine itself."""
        return self.machine.run_dir if self.machine is not None else None

    def move(self, to: Phase) -> None:
        """The one place a visit's phase changes; refuses a move the table does not allow."""
        if to not in MOVES[self._phase]:
            raise VisitStateError(self.session_id, self._phase, to)
        logger.debug("visit %s: %s → %s", self.session_id, self._phase.value, to.value)
        self._phase = to
        # Wake everyone waiting for a change, then arm a fresh event for the next one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def until(self, *phases: Phase) -> Phase:
        """Wait until the visit is in one of `phases`; returns that phase."""
        while self._phase not in phases:
            await self._changed.wait()
        return self._phase

    def display_ready(self) -> bool:
        """Its display can be shown: the machine runs, or, still starting, it is a
        warm pool's machine whose screen is there already (the same picture the
        visitor sees once it runs, a moment later)."""
        if self._phase is Phase.RUNNING:
            return True
        return self._phase is Phase.STARTING and bool(getattr(self.machine, "held", False))

    def machine_given(self) -> None:
        """Its machine was chosen (no change of phase): wake those waiting for its display."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def until_display(self) -> Phase:
        """Wait until its display can be shown (`display_ready`) or it ends; its phase."""
        while not self.display_ready() and self.live:
            await self._changed.wait()
        return self._phase
