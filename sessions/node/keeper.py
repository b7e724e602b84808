"""The keeper: this node's live visits and their machines.

Owns: the node's `Visit`s and every change of their phase; the guard every
action on a visit takes (`Keeper.require`, `Visit.require`); starting a visit's
machine (through the machine factory it is given) and ending it (the machine
stopped, which deletes its own run directory, the visit's lease let go once the
end is recorded); the grace period after the last viewer leaves (the viewers
themselves: `sessions.node.viewers`; the sandbox: `sessions.node.sandboxes`);
typing for the visitor, one request at a time; the idle and time limits with
their warnings; reset (the old machine killed before the new one starts); the
watch for a QEMU that exits by itself or pauses on a disk error. Every task it
starts is kept, cancelled and awaited by it.

Must not: touch the database, the waiting line or the catalogue. What the rest
of the portal learns (rows, the scheduler, the pages' events) goes out through
the `Recorder` it is given; machines come from its `MachineFactory`, so tests
can hand it a fake.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from sessions.errors import (
    SessionBusyError,
    SessionEndedError,
    gettext_noop,
)
from sessions.machines.host import Lease
from sessions.machines.keys import KeyedMachine, Keystroke, TypingPace, keystrokes_send
from sessions.machines.machine import MachineError, MachineStartError
from sessions.machines.overlay import OverlayError
from sessions.machines.sandbox import (
    SandboxConfig,
)
from sessions.node.metrics import MACHINE_STARTS
from sessions.node.visit import EndReason, Phase, Visit
from sessions.tasks import task_new

logger = logging.getLogger(__name__)
T = TypeVar("T")

# The sentences a visit's end is told with that carry a value: stored in English
# with the value filled in, and read back in the visitor's language by the web
# edge, which finds the value again by these templates (END_TEMPLATES).
END_TIME_LIMIT = gettext_noop("The visit reached its time limit of %(duration)s.")
END_IDLE = gettext_noop("Nobody used the machine for %(duration)s.")
END_GRACE = gettext_noop("The page was closed for more than %(seconds)s s.")
START_FAILED = gettext_noop("The machine could not start: %(reason)s")
END_TEMPLATES = (END_TIME_LIMIT, END_IDLE, END_GRACE, START_FAILED)


class KeptMachine(Protocol):
    """What the keeper uses of a machine (`sessions.machines.machine.Machine` is one)."""

    @property
    def pid(self) -> int | None: ...
    @property
    def run_dir(self) -> Path: ...
    @property
    def vnc_path(self) -> Path: ...
    @property
    def log_path(self) -> Path: ...
    # The end of its QEMU's log, once it has stopped.
    last_words: str
    # With `hold`, a machine that resumes a saved state stays paused once loaded; the
    # next `start()` lets it run.
    async def start(self, *, hold: bool = False) -> None: ...
    @property
    def held(self) -> bool: ...
    async def stop(self) -> None: ...
    async def kill_now(self) -> None: ...
    async def wait(self) -> int: ...
    async def paused_by_io_error(self) -> dict[str, Any]: ...
    def out_of_memory(self) -> bool: ...


class MachineFactory(Protocol):
    async def __call__(self, visit: Visit, *, warm: bool) -> KeptMachine | None:
        """A new, unstarted machine for the visit, its disks made in a run directory of
        its own, which the machine deletes once it has stopped. With `warm`, one that
        resumes the exhibit's start state, or None when it has no usable one."""


class Recorder(Protocol):
    """What the rest of the portal learns from the keeper (rows, the scheduler, pages)."""

    async def visit_starting(self, visit: Visit) -> None:
        """It left the line; its machine is being made."""

    async def visit_running(self, visit: Visit) -> None:
        """Its first machine runs (`started` and `expires` are set)."""

    async def visit_replaced(self, visit: Visit) -> None:
        """A reset gave it a new machine."""

    async def visit_ended(self, visit: Visit, *, reason: str, detail: str) -> None:
        """Its end, recorded before its leases go."""

    def visit_gone(self, visit: Visit) -> None:
        """Every trace of it is gone: its machine place is free."""

    def notify(self, session_id: str, event: dict[str, Any]) -> None:
        """An event for the pages watching the session."""


@dataclass(frozen=True)
class KeeperConfig:
    run_root: Path
    grace_s: float
    # How long a display waits for a starting machine.
    display_wait_s: float
    session_max_s: float = 30 * 60.0
    idle_s: float = 10 * 60.0
    warning_s: float = 60.0
    displays_per_session: int = 4
    watchers_per_session: int = 10
    sandbox: SandboxConfig | None = None


class Keeper:
    def __init__(self, config: KeeperConfig, *, machine_factory: MachineFactory, recorder: Recorder,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._factory = machine_factory
        self._recorder = recorder
        self._clock = clock
        self._visits: dict[str, Visit] = {}
        # Called with each machine a visit is given (before it starts), and awaited
        # as each visit ends, once its machine has stopped (the prints, sessions.node.prints).
        self.machine_hooks: list[Callable[[Visit, KeptMachine], None]] = []
        # Called once a visit's machine runs (from the pool, resumed or booted),
        # before the visit counts as running: what is set up on the running machine.
        self.started_hooks: list[Callable[[Visit, KeptMachine], Awaitable[None]]] = []
        self.end_hooks: list[Callable[[Visit], Awaitable[None]]] = []

    # --- queries -----------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    @property
    def running_count(self) -> int:
        return sum(1 for visit in self._visits.values() if visit.phase is Phase.RUNNING)

    def visit(self, session_id: str) -> Visit | None:
        return self._visits.get(session_id)

    def visits(self) -> list[Visit]:
        return list(self._visits.values())

    def is_live(self, session_id: str) -> bool:
        return session_id in self._visits

    def machine(self, session_id: str) -> KeptMachine | None:
        """The running machine of a live visit."""
        visit = self._visits.get(session_id)
        return visit.machine if visit is not None and visit.phase is Phase.RUNNING else None

    def generation(self, session_id: str) -> int | None:
        """Which machine of the visit is current: it changes at every reset."""
        visit = self._visits.get(session_id)
        return visit.generation if visit is not None else None

    def idle_s(self, session_id: str) -> float | None:
        """Seconds since the visitor's last input, for a visit whose machine runs."""
        visit = self._visits.get(session_id)
        if visit is None or visit.phase not in {Phase.RUNNING, Phase.RESETTING}:
            return None
        return max(0.0, self._clock() - visit.last_input)

    def first_frame(self, *, session_id: str) -> float | None:
        """A display of the visit showed its first screen update: the seconds since its
        machine began to start, the first time only (None after, or for no visit)."""
        visit = self._visits.get(session_id)
        if visit is None or visit.first_frame_shown or visit.launch_began is None:
            return None
        visit.first_frame_shown = True
        return self._clock() - visit.launch_began

    # --- a visit's beginning -----------------------------------------------------

    def visit_open(self, *, session_id: str, exhibit: Any, queued: bool, lease: Lease | None) -> Visit:
        """Take a new visit in (its machine lease already held); `visit_begin` sets it going."""
        visit = Visit(session_id=session_id, exhibit=exhibit,
                      first=Phase.QUEUED if queued else Phase.STARTING, lease=lease)
        self._visits[session_id] = visit
        return visit

    def visit_drop(self, visit: Visit) -> None:
        """Let go of a visit that never began (its row could not be written)."""
        self._visits.pop(visit.session_id, None)
        if visit.lease is not None:
            visit.lease.release()

    def visit_release(self, visit: Visit) -> None:
        """Let go of a visit in line that another node took: no machine, no record
        (the row is that node's now), nothing to end."""
        if visit.phase is not Phase.QUEUED:
            return
        self.grace_cancel(visit)
        self._visits.pop(visit.session_id, None)
        if visit.lease is not None:
            visit.lease.release()
        visit.move(Phase.ENDED)

    def visit_begin(self, visit: Visit) -> None:
        """Start its machine, or, in line, keep its place only while someone watches."""
        if visit.phase is Phase.QUEUED:
            self.grace_start(visit)
        else:
            self._launch_begin(visit, from_queue=False)

    def promote(self, session_id: str) -> bool:
        """A machine is free for a visit in line: start it. False if it is no longer waiting."""
        visit = self._visits.get(session_id)
        if visit is None or visit.phase is not Phase.QUEUED:
            return False
        visit.move(Phase.STARTING)
        self.grace_cancel(visit)
        self._launch_begin(visit, from_queue=True)
        return True

    def _launch_begin(self, visit: Visit, *, from_queue: bool) -> None:
        visit.launch_began = self._clock()
        visit.launch_task = task_new(self._launch(visit, from_queue=from_queue),
                                     name=f"launch-{visit.session_id}")

    async def _launch(self, visit: Visit, *, from_queue: bool) -> None:
        try:
            if from_queue:
                await self._recorder.visit_starting(visit)
            await self._machine_start(visit)
        except (OverlayError, MachineError) as error:
            self._start_failed(visit, error)
            return
        if visit.phase is not Phase.STARTING:
            return  # ended meanwhile: the end stops the machine
        visit.started = visit.last_input = self._clock()
        visit.expires = visit.started + self.config.session_max_s
        # Viewers may connect now; the record follows.
        self._running(visit)
        await self._recorder.visit_running(visit)

    async def _machine_start(self, visit: Visit) -> KeptMachine:
        """A running machine: resumed from the exhibit's start state when it has a
        usable one, booted cold otherwise or if resuming fails. A visit going on from a
        saved one resumes that or fails: a fresh machine would lose the visitor's work."""
        if visit.resume is not None:
            try:
                saved = await self._factory(visit, warm=True)
                if saved is None:
                    raise MachineError("the machine factory made no machine for the saved visit")
                machine = await self._machine_run(visit, saved)
            except (OverlayError, MachineError):
                MACHINE_STARTS.labels("failed").inc()
                raise
            finally:
                visit.resume = None
            MACHINE_STARTS.labels("saved").inc()
            return machine
        try:
            warm = await self._factory(visit, warm=True)
            if warm is not None:
                # A warm pool's machine is resumed already: starting it lets it run.
                pooled = bool(getattr(warm, "held", False))
                machine = await self._machine_run(visit, warm)
                MACHINE_STARTS.labels("pooled" if pooled else "instant").inc()
                return machine
        except (OverlayError, MachineError) as error:
            logger.error("session %s: resuming the start state failed, booting cold: %s",
                         visit.session_id, error)
        try:
            cold = await self._factory(visit, warm=False)
            if cold is None:
                raise MachineError("the machine factory made no machine")
            machine = await self._machine_run(visit, cold)
        except (OverlayError, MachineError):
            MACHINE_STARTS.labels("failed").inc()
            raise
        MACHINE_STARTS.labels("cold").inc()
        return machine

    async def _machine_run(self, visit: Visit, machine: KeptMachine) -> KeptMachine:
        # Known before it starts, so an end meanwhile stops it.
        visit.machine = machine
        for hook in self.machine_hooks:
            hook(visit, machine)
        # A pooled machine's display is up already: its viewers may connect meanwhile.
        visit.machine_given()
        # A saved visit's machine is held paused while the hooks give it its disks
        # back: the guest never runs with another disk in a drive than it had.
        await machine.start(hold=visit.resume is not None)
        for started in self.started_hooks:
            await started(visit, machine)
        if machine.held:
            await machine.start()
        return machine

    def _start_failed(self, visit: Visit, error: OverlayError | MachineError) -> None:
        """Log what went wrong for the operator and end the visit with a reason."""
        logged = error.log_detail if isinstance(error, OverlayError) else str(error)
        logger.error("session %s could not start: %s", visit.session_id, logged)
        # A run directory or disk the server could not make is the server's fault.
        reason = EndReason.SERVER if isinstance(error, OverlayError) else EndReason.CRASHED
        self.end_soon(visit, reason=reason, detail=start_failure(error))

    def _running(self, visit: Visit) -> None:
        visit.move(Phase.RUNNING)
        visit.watch_task = task_new(self._watch(visit), name=f"watch-{visit.session_id}")
        if visit.viewers == 0:
            self.grace_start(visit)

    async def _watch(self, visit: Visit) -> None:
        """End the visit when its QEMU exits by itself or cannot use its disk."""
        machine = visit.machine
        assert machine is not None
        exited = asyncio.ensure_future(machine.wait())
        failed_io = asyncio.ensure_future(machine.paused_by_io_error())
        try:
            await asyncio.wait({exited, failed_io}, return_when=asyncio.FIRST_COMPLETED)
            code = exited.result() if exited.done() else None
            io_error = failed_io.result() if failed_io.done() and not failed_io.exception() else None
        finally:
            for waiter in (exited, failed_io):
                waiter.cancel()
            await asyncio.gather(exited, failed_io, return_exceptions=True)
        if visit.phase is not Phase.RUNNING:
            return  # the keeper stopped it
        if io_error is not None and code is None:
            logger.error("session %s: disk error, the guest is paused: %s", visit.session_id, io_error)
            full = bool(io_error.get("nospace"))
            detail = (gettext_noop("The server ran out of disk space, so this visit had to end.")
                      if full else
                      gettext_noop("The machine's disk failed on the server, so this visit had to end."))
            self.end_soon(visit, reason=EndReason.SERVER, detail=detail)
            return
        logger.warning("session %s: QEMU exited by itself with code %s", visit.session_id, code)
        if code == 0:
            reason, detail = EndReason.VISITOR, gettext_noop("The machine was switched off.")
        elif machine.out_of_memory():
            logger.warning("session %s: QEMU passed its memory limit and was killed", visit.session_id)
            reason, detail = EndReason.CRASHED, gettext_noop("The machine needed more memory than it may "
                                                             "use on this server, so it was stopped.")
        else:
            reason, detail = EndReason.CRASHED, gettext_noop("The machine stopped unexpectedly.")
        self.end_soon(visit, reason=reason, detail=detail)

    # --- reset -------------------------------------------------------------------

    async def reset(self, *, session_id: str, exhibit: Any = None) -> None:
        """Replace the visit's machine with a fresh one at the exhibit's start state.

        The old machine is killed before the new one starts; the generation
        changes, so displays of the old machine know to reconnect.
        """
        visit = self.require(session_id, Phase.RUNNING)
        if exhibit is not None:
            visit.exhibit = exhibit
        sandbox, visit.sandbox = visit.sandbox, None
        visit.move(Phase.RESETTING)
        visit.generation += 1
        try:
            if sandbox is not None:
                # A checkpoint or a disk going in finishes first; they die with the old machine.
                async with sandbox.lock:
                    pass
            await self._replace(visit)
        except BaseException:
            # The phase is what it is now: other tasks move it while this one awaits.
            if visit.phase is Phase.RESETTING:
                # Neither machine runs: the visit cannot go on.
                self.end_soon(visit, reason=EndReason.SERVER,
                                  detail=gettext_noop("The machine could not be reset."))
            raise

    async def _replace(self, visit: Visit) -> None:
        old = visit.machine
        if visit.watch_task is not None:
            visit.watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await visit.watch_task
        # Its overlay is discarded, so it need not shut down in order, and the new
        # machine (in a run directory of its own) need not wait for the kernel to
        # tear the old one down; the old one's files go once it has stopped.
        if old is not None:
            await old.kill_now()
        started, stopped = await asyncio.gather(
            self._machine_start(visit),
            old.stop() if old is not None else asyncio.sleep(0),
            return_exceptions=True,
        )
        if isinstance(stopped, BaseException):
            logger.error("session %s: the replaced machine did not stop cleanly: %s",
                         visit.session_id, stopped)
        if isinstance(started, asyncio.CancelledError):
            raise started
        if isinstance(started, (OverlayError, MachineError)):
            self._start_failed(visit, started)
            raise SessionEndedError(start_failure(started)) from started
        if isinstance(started, BaseException):
            raise started
        if visit.phase is not Phase.RESETTING:
            await started.stop()  # ended meanwhile
            raise SessionEndedError()
        # A reset is input: the visitor is there. The visit's time limit stays.
        visit.last_input = self._clock()
        self.warning_clear(visit, "idle")
        self.grace_cancel(visit)
        self._running(visit)
        await self._recorder.visit_replaced(visit)

    # --- visitor input and time limits -------------------------------------------

    def input_seen(self, visit: Visit) -> None:
        """The visitor did something (typed, pointed, went back, put a disk in)."""
        visit.last_input = self._clock()
        self.warning_clear(visit, "idle")

    def notify(self, session_id: str, event: dict[str, Any]) -> None:
        """An event for the pages watching the visit."""
        self._recorder.notify(session_id, event)

    def session_input(self, *, session_id: str) -> None:
        """The visitor used the keyboard or mouse (or answered an idle warning)."""
        visit = self._visits.get(session_id)
        if visit is None:
            return
        visit.last_input = self._clock()
        self.warning_clear(visit, "idle")

    async def keys_send(self, *, session_id: str, strokes: list[Keystroke], pace: TypingPace,
                        stored: bool = True) -> None:
        """Type keystrokes for the visitor on the running machine; typing is input.
        `stored`: each keystroke types a character (text, not a combination)."""
        visit = self.require(session_id, Phase.RUNNING)
        visit.last_input = self._clock()
        self.warning_clear(visit, "idle")
        async with visit.typing:
            machine = self.require(session_id, Phase.RUNNING).machine
            try:
                await keystrokes_send(cast(KeyedMachine, machine), strokes, pace=pace, stored=stored)
            except MachineError as error:
                self.require(session_id, Phase.RUNNING)  # ended or replaced meanwhile: say so
                raise SessionBusyError(
                    gettext_noop("The machine did not take the keys; try again.")) from error
        visit.last_input = self._clock()

    def require(self, session_id: str, *phases: Phase) -> Visit:
        """The guard every action on a visit takes: the live visit if it is in one of
        `phases` (with its machine, when that phase has one), else one of the runtime's
        errors saying why not (`Visit.require`)."""
        visit = self._visits.get(session_id)
        if visit is None:
            raise SessionEndedError()
        return visit.require(*phases)

    def warning_clear(self, visit: Visit, reason: str) -> None:
        if visit.warning == reason:
            visit.warning = None
            self._recorder.notify(visit.session_id, {"type": "warning_cleared", "reason": reason})

    def clock_tick(self) -> None:
        """Warn ahead of the idle and time limits, and end visits that reach one."""
        now = self._clock()
        for visit in list(self._visits.values()):
            if visit.expires is None or visit.phase is not Phase.RUNNING:
                continue
            idle_end = visit.last_input + self.config.idle_s
            reason, deadline = ((EndReason.TIMEOUT, visit.expires) if visit.expires <= idle_end
                                else (EndReason.IDLE, idle_end))
            left = deadline - now
            if left <= 0:
                detail = (END_TIME_LIMIT if reason == EndReason.TIMEOUT else END_IDLE) % {
                    "duration": minutes(self.config.session_max_s if reason == EndReason.TIMEOUT
                                        else self.config.idle_s)}
                self.end_soon(visit, reason=reason, detail=detail)
            elif left <= self.config.warning_s and visit.warning != reason:
                visit.warning = reason
                self._recorder.notify(visit.session_id, {"type": "warning", "reason": str(reason),
                                                         "seconds_left": max(1, math.ceil(left))})

    # --- the grace period -------------------------------------------------------

    def grace_start(self, visit: Visit) -> None:
        if visit.grace_task is None and visit.live:
            visit.grace_task = task_new(self._grace(visit), name=f"grace-{visit.session_id}")

    def grace_cancel(self, visit: Visit) -> None:
        grace, visit.grace_task = visit.grace_task, None
        if grace is not None:
            grace.cancel()

    async def _grace(self, visit: Visit) -> None:
        await asyncio.sleep(self.config.grace_s)
        visit.grace_task = None
        self.end_soon(visit, reason=EndReason.VISITOR,
                          detail=END_GRACE % {"seconds": f"{self.config.grace_s:g}"})

    # --- the end -----------------------------------------------------------------

    async def end(self, *, session_id: str, reason: str, detail: str = "") -> None:
        """End a visit; returns once its machine is stopped and its files are gone."""
        visit = self._visits.get(session_id)
        if visit is None:
            return
        await asyncio.shield(self.end_soon(visit, reason=reason, detail=detail))

    async def wait_ended(self, *, session_id: str, timeout_s: float) -> bool:
        """True once the visit has ended (or is not live), False on timeout."""
        visit = self._visits.get(session_id)
        if visit is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await visit.until(Phase.ENDED)
        return visit.phase is Phase.ENDED

    async def end_all(self, *, reason: str, detail: str) -> None:
        """End every visit on the node and wait for all of it."""
        visits = list(self._visits.values())
        await asyncio.gather(*(self.end_soon(visit, reason=reason, detail=detail)
                               for visit in visits), return_exceptions=True)

    def end_soon(self, visit: Visit, *, reason: str, detail: str) -> asyncio.Task[None]:
        if visit.finish_task is None:
            visit.move(Phase.ENDING)
            visit.finish_task = task_new(self._finish(visit, reason=reason, detail=detail),
                                         name=f"finish-{visit.session_id}")
        return visit.finish_task

    async def _finish(self, visit: Visit, *, reason: str, detail: str) -> None:
        current = asyncio.current_task()
        self.grace_cancel(visit)
        try:
            for other in (visit.launch_task, visit.watch_task):
                if other is not None and other is not current and not other.done():
                    other.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await other
            if visit.machine is not None:
                # Its run directory and leases go once it has stopped.
                await visit.machine.stop()
                if tail := visit.machine.last_words.replace("\n", " | "):
                    logger.info("session %s ended (%s); QEMU said: %s", visit.session_id, reason, tail)
            for hook in self.end_hooks:
                try:
                    await hook(visit)
                except Exception:
                    logger.exception("session %s: letting go of what it kept failed", visit.session_id)
        finally:
            try:
                # Recorded before the keeper lets go, so the reaper never sees a live
                # row that nobody owns.
                await self._recorder.visit_ended(visit, reason=reason, detail=detail)
            finally:
                self._visits.pop(visit.session_id, None)
                # Every trace is gone (its machine let go of its own files and leases).
                if visit.lease is not None:
                    visit.lease.release()
                visit.move(Phase.ENDED)
                self._recorder.notify(visit.session_id, {"type": "changed"})
                self._recorder.visit_gone(visit)


def minutes(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        count = int(seconds // 60)
        return f"{count} minute{'s' if count != 1 else ''}"
    return f"{seconds:g} s"


def start_failure(error: OverlayError | MachineError) -> str:
    """A sentence for the visitor: what failed, never a host path or a command line."""
    if isinstance(error, OverlayError):
        return START_FAILED % {"reason": error.args[0]}
    if isinstance(error, MachineStartError) and "not installed" in str(error.args[0]):
        return gettext_noop("The machine could not start: the emulator is not installed on this server.")
    return gettext_noop("The machine could not start. The error has been logged; please try again later.")
