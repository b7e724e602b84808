"""The broker: the only owner of running machines.

Owns: starting a visitor's machine (run directory, overlay, QEMU), knowing
which sessions are live (each holds its machine lease from before its row
exists until after its end is recorded, and its machines' uid lease), the
grace period after the browser leaves, noticing a machine that dies, and
ending sessions: machine stopped, run directory and
overlay deleted, the row marked ended with its reason. Every background task
it starts is kept, cancelled and awaited by it.

Must not: speak HTTP or WebSocket (views and consumers translate its errors),
or start anything at import time: Daphne has no lifespan events, so the broker
is created lazily inside the running event loop by `get_broker()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.models import Exhibit, ExhibitMedia, StartState

from .confine import Confinement, MemoryCgroups
from .host import (
    HostError,
    Lease,
    UidLease,
    accelerator_choose,
    capacity_default,
    install_id,
    lease_dir,
    machine_lease,
    machine_lease_take,
    memory_cgroups,
    runas_choose,
    uid_lease_take,
    uid_leases_tidy,
)
from .machine import (
    Machine,
    MachineError,
    MachineStartError,
    accelerator_resolve,
    log_tail,
    qemu_version,
    state_key,
)
from .models import VisitorSession, new_session_id
from .overlay import OVERLAY_FILE, OverlayError, overlay_create, run_dir_create, run_dir_remove
from .prepare import PrepareError, StartCondition, start_state_discard, start_state_prepare
from .reaper import reap_once

logger = logging.getLogger(__name__)
T = TypeVar("T")

State = VisitorSession.State
Reason = VisitorSession.EndedReason


class SessionError(Exception):
    """Base of the broker's errors; the message is for a person."""


class SessionEndedError(SessionError):
    pass


class SessionExistsError(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__("This browser already has a machine running.")
        self.session_id = session_id


class SessionBusyError(SessionError):
    pass


class CapacityError(SessionError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Every machine on this server is in use and the waiting line is full. "
                         "Please try again shortly.")
        self.retry_after_s = retry_after_s


class RateLimitedError(SessionError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Too many machines were started from here in a short time. "
                         "Please wait a moment and try again.")
        self.retry_after_s = retry_after_s


class DisplayUnavailableError(SessionError):
    pass


class ViewerLimitError(SessionError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"This machine is already shown in {limit} places, the most it may be. "
                         "Close one of them and try again.")


class AddressLimitError(RateLimitedError):
    def __init__(self, limit: int, retry_after_s: int) -> None:
        SessionError.__init__(
            self, f"Your network already has {limit} machines running or waiting, the most one "
                  "network may have at once. Please end one of them first.")
        self.retry_after_s = retry_after_s


class ExhibitUnavailableError(SessionError):
    """The exhibit cannot start: a master it needs failed its fixity check."""


@dataclass(frozen=True)
class BrokerConfig:
    run_root: Path
    qemu_binary: str
    qemu_img_binary: str
    accelerator: str
    grace_s: float
    start_timeout_s: float
    qmp_timeout_s: float
    stop_timeout_s: float
    qemu_img_timeout_s: float
    capacity: int
    queue_max: int = 0
    session_max_s: float = 30 * 60.0
    idle_s: float = 10 * 60.0
    warning_s: float = 60.0
    reaper_interval_s: float = 30.0
    starts_per_browser: int = 10
    starts_per_address: int = 120
    start_window_s: float = 60.0
    # Live visits (waiting, starting, running) one network address may hold.
    live_per_address: int = 50
    displays_per_session: int = 4
    # Machines run as uids leased from base+1 .. base+count; a None base keeps
    # the portal's user.
    uid_base: int | None = None
    uid_count: int = 0
    uid_lease_dir: Path = Path("/run/portal-uids")
    memory_overhead_mb: int = 192
    cgroups: MemoryCgroups | None = None
    # This install's name on the host, and where its processes lease machines.
    install: str = "default"
    lease_dir: Path | None = None

    @classmethod
    def from_settings(cls) -> BrokerConfig:
        capacity = settings.PORTAL_MAX_SESSIONS or capacity_default()
        uid_count = settings.PORTAL_QEMU_UID_COUNT
        uid_base = runas_choose(settings.PORTAL_QEMU_RUNAS, settings.PORTAL_QEMU_UID_BASE, uid_count)
        install = install_id()
        return cls(
            install=install,
            lease_dir=lease_dir(),
            run_root=Path(settings.PORTAL_RUN_DIR),
            qemu_binary=settings.PORTAL_QEMU_BINARY,
            qemu_img_binary=settings.PORTAL_QEMU_IMG_BINARY,
            accelerator=accelerator_choose(settings.PORTAL_ACCELERATOR),
            grace_s=settings.PORTAL_GRACE_S,
            start_timeout_s=settings.PORTAL_START_TIMEOUT_S,
            qmp_timeout_s=settings.PORTAL_QMP_TIMEOUT_S,
            stop_timeout_s=settings.PORTAL_STOP_TIMEOUT_S,
            qemu_img_timeout_s=settings.PORTAL_QEMU_IMG_TIMEOUT_S,
            capacity=capacity,
            queue_max=settings.PORTAL_QUEUE_MAX or 2 * capacity,
            session_max_s=settings.PORTAL_SESSION_MAX_S,
            idle_s=settings.PORTAL_IDLE_S,
            warning_s=settings.PORTAL_WARNING_S,
            reaper_interval_s=settings.PORTAL_REAPER_INTERVAL_S,
            starts_per_browser=settings.PORTAL_STARTS_PER_BROWSER,
            starts_per_address=settings.PORTAL_STARTS_PER_ADDRESS,
            start_window_s=settings.PORTAL_START_WINDOW_S,
            live_per_address=settings.PORTAL_LIVE_PER_ADDRESS or max(1, capacity // 2),
            displays_per_session=settings.PORTAL_DISPLAYS_PER_SESSION,
            uid_base=uid_base,
            uid_count=uid_count,
            uid_lease_dir=Path(settings.PORTAL_UID_LEASE_DIR),
            memory_overhead_mb=settings.PORTAL_QEMU_MEMORY_OVERHEAD_MB,
            cgroups=memory_cgroups(install),
        )

    @property
    def leases(self) -> Path:
        return self.lease_dir if self.lease_dir is not None else self.run_root.parent / "leases"


@dataclass(eq=False)
class _Live:
    """A session the broker owns: waiting in line, starting or running."""

    session_id: str
    run_dir: Path
    exhibit: Exhibit
    queued: bool = False
    machine: Machine | None = None
    running: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    # Network address the visit was started from ("" when unknown).
    address: str = ""
    # Everyone watching (display and events sockets), and the display sockets alone.
    viewers: int = 0
    displays: int = 0
    launch_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None
    grace_task: asyncio.Task[None] | None = None
    finish_task: asyncio.Task[None] | None = None
    generation: int = 0
    resetting: bool = False
    # Held from before the row exists until after every trace is gone: what tells
    # every reaper of the install that this session is owned.
    lease: Lease | None = None
    # The uid its machines run as, leased host-wide, kept across resets.
    uid_lease: UidLease | None = None
    # Event-loop clock: when the first machine ran, the latest visitor input,
    # and the end of the longest visit.
    started: float | None = None
    last_input: float = 0.0
    expires: float | None = None
    # The warning the page shows now: "idle", "timeout" or None.
    warning: str | None = None


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._live: dict[str, _Live] = {}
        self._queue: deque[_Live] = deque()
        self._create_lock = asyncio.Lock()
        self._qemu_version: str | None = None
        self._starts = StartLimiter(window_s=config.start_window_s)
        # A visit's expected length, learned from finished visits, for wait estimates.
        self._visit_s = min(config.session_max_s, 5 * 60.0)
        self._events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._background: list[asyncio.Task[None]] = []
        self._helpers: set[asyncio.Task[Any]] = set()

    # --- queries ---------------------------------------------------------------

    @property
    def running_count(self) -> int:
        return sum(1 for live in self._live.values() if live.running.is_set())

    @property
    def active_count(self) -> int:
        """Machines counted against capacity: starting, running or still stopping."""
        return sum(1 for live in self._live.values() if not live.queued)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def qemu_version(self) -> str:
        if self._qemu_version is None:
            self._qemu_version = qemu_version(self.config.qemu_binary)
        return self._qemu_version

    def accelerator_for(self, exhibit: Exhibit) -> str:
        return accelerator_resolve(exhibit.machine_profile(), host=self.config.accelerator)

    def machine(self, session_id: str) -> Machine | None:
        """The running machine of a live session, for tools that talk QMP."""
        live = self._live.get(session_id)
        return live.machine if live and live.running.is_set() else None

    def is_live(self, session_id: str) -> bool:
        return session_id in self._live

    def queue_position(self, session_id: str) -> int | None:
        """1 for the next visitor to get a machine; None when not waiting."""
        live = self._live.get(session_id)
        if live is None or not live.queued:
            return None
        for position, waiting in enumerate(self._queue, start=1):
            if waiting is live:
                return position
        return None

    def queue_wait_s(self, position: int) -> float:
        """Estimated wait for a place in line: the position-th machine to become free.

        Each running visit is expected to end after the usual visit length
        (learned from finished visits), and no later than its time limit.
        """
        now = asyncio.get_running_loop().time()
        ends = []
        for live in self._live.values():
            if live.queued:
                continue
            expected = (live.started if live.started is not None else now) + self._visit_s
            if live.expires is not None:
                expected = min(expected, live.expires)
            ends.append(max(now, expected))
        if not ends:
            return 0.0
        ends.sort()
        rounds, index = divmod(position - 1, len(ends))
        return ends[index] - now + rounds * self._visit_s

    def time_left_s(self, session_id: str) -> float | None:
        live = self._live.get(session_id)
        if live is None or live.expires is None:
            return None
        return max(0.0, live.expires - asyncio.get_running_loop().time())

    # --- start -----------------------------------------------------------------

    async def session_create(self, *, exhibit: Exhibit, owner: str, address: str = "") -> VisitorSession:
        """Record a new session; start its machine now, or line it up for the next free one."""
        problem = await exhibit.fixity_problem()
        if problem is not None:
            raise ExhibitUnavailableError(problem)
        async with self._create_lock:
            existing = await VisitorSession.objects.filter(
                owner=owner, state__in=VisitorSession.LIVE_STATES
            ).afirst()
            if existing is not None:
                raise SessionExistsError(existing.id)
            queued = self.active_count >= self.config.capacity
            if queued and len(self._queue) >= self.config.queue_max:
                wait = self.queue_wait_s(len(self._queue) + 1)
                raise CapacityError(retry_after_s=int(min(3600, max(5, wait))))
            if address and self._live_from(address) >= self.config.live_per_address:
                raise AddressLimitError(self.config.live_per_address, retry_after_s=60)
            retry = self._starts.take({
                f"browser:{owner}": self.config.starts_per_browser,
                f"address:{address}": self.config.starts_per_address,
            })
            if retry is not None:
                raise RateLimitedError(retry_after_s=max(1, int(retry + 0.999)))
            session_id = new_session_id()
            # Owned before its row exists, so no reaper of the install (in this
            # process or another) ever takes it for an orphan.
            lease = machine_lease_take(name=session_id, directory=self.config.leases)
            live = _Live(session_id=session_id, run_dir=self.config.run_root / session_id,
                         exhibit=exhibit, queued=queued, address=address, lease=lease)
            self._live[session_id] = live
            try:
                session = await VisitorSession.objects.acreate(
                    id=session_id,
                    exhibit=exhibit,
                    owner=owner,
                    state=State.QUEUED if queued else State.STARTING,
                    accelerator=self.accelerator_for(exhibit),
                    run_dir=os.fspath(live.run_dir),
                )
            except BaseException:
                self._live.pop(session_id, None)
                lease.release()
                raise
            if queued:
                self._queue.append(live)
                # A place in line is kept only while someone watches it.
                self._grace_start(live)
            else:
                self._launch_begin(live)
        return session

    def _live_from(self, address: str) -> int:
        return sum(1 for live in self._live.values() if live.address == address)

    def _launch_begin(self, live: _Live, *, from_queue: bool = False) -> None:
        live.launch_task = _task(self._launch(live, from_queue=from_queue),
                                 name=f"launch-{live.session_id}")

    def uid_lease(self) -> UidLease | None:
        """A uid for one machine, leased host-wide; None where machines keep the portal's user."""
        if self.config.uid_base is None:
            return None
        try:
            return uid_lease_take(base=self.config.uid_base, count=self.config.uid_count,
                                  directory=self.config.uid_lease_dir)
        except (HostError, OSError) as error:
            raise MachineStartError(f"no uid for QEMU: {error}", argv=[], returncode=None,
                                    log_tail="") from error

    @property
    def memory_limit_method(self) -> str:
        """How a machine's memory is limited here: cgroup-v2, cgroup-v1 or rlimit-as."""
        return Confinement(memory_bytes=1, cgroups=self.config.cgroups).memory_method

    def confinement_for(self, *, memory_mb: int, run_as: tuple[int, int] | None,
                        uid_lease: UidLease | None = None) -> Confinement:
        """How a machine is held; with `uid_lease`, it runs as the leased uid and keeps the lease."""
        if uid_lease is not None:
            run_as = (uid_lease.uid, uid_lease.uid)
        return Confinement(
            run_as=run_as,
            lease_fds=(uid_lease.fd,) if uid_lease is not None else (),
            memory_bytes=(memory_mb + self.config.memory_overhead_mb) * 1024 * 1024,
            cgroups=self.config.cgroups,
        )

    async def _launch(self, live: _Live, *, from_queue: bool) -> None:
        try:
            if from_queue:
                await VisitorSession.objects.filter(
                    id=live.session_id, state=State.QUEUED
                ).aupdate(state=State.STARTING)
                self._notify_changed(live.session_id)
            run_dir_create(root=self.config.run_root, name=live.session_id)
            machine = await self._machine_start(live, live.exhibit)
        except (OverlayError, MachineError) as error:
            self._start_failed(live, error)
            return
        # Viewers may connect now; the record follows, unless the session ended meanwhile.
        loop = asyncio.get_running_loop()
        live.started = live.last_input = loop.time()
        live.expires = live.started + self.config.session_max_s
        self._running(live)
        now = timezone.now()
        await VisitorSession.objects.filter(id=live.session_id, state=State.STARTING).aupdate(
            state=State.RUNNING, started_at=now, pid=machine.pid,
            expires_at=now + timedelta(seconds=self.config.session_max_s),
        )
        self._notify_changed(live.session_id)

    def _start_failed(self, live: _Live, error: OverlayError | MachineError) -> None:
        """Log what went wrong for the operator and end the session with a reason."""
        logged = error.log_detail if isinstance(error, OverlayError) else str(error)
        logger.error("session %s could not start: %s", live.session_id, logged)
        # A run directory or disk the server could not make is the server's fault.
        reason = Reason.SERVER if isinstance(error, OverlayError) else Reason.CRASHED
        self._finish_soon(live, reason=reason, detail=_start_failure(error))

    def _running(self, live: _Live) -> None:
        live.running.set()
        live.watch_task = _task(self._watch(live), name=f"watch-{live.session_id}")
        if live.viewers == 0:
            self._grace_start(live)

    async def _machine_start(self, live: _Live, exhibit: Exhibit) -> Machine:
        """A fresh overlay and a running machine: resumed from the exhibit's start
        state when it has a fresh one, booted cold otherwise or if resuming fails."""
        start = await self.start_state_usable(exhibit)
        if start is not None:
            try:
                return await self._machine_launch(
                    live, exhibit, base=Path(start.warm_path), base_format="qcow2",
                    incoming_state=Path(start.state_path),
                )
            except (OverlayError, MachineError) as error:
                logger.error("session %s: resuming %s's start state failed, booting cold: %s",
                             live.session_id, exhibit.slug, error)
        return await self._machine_launch(
            live, exhibit, base=Path(exhibit.image.path), base_format=exhibit.image.format,
        )

    async def _machine_launch(self, live: _Live, exhibit: Exhibit, *, base: Path, base_format: str,
                              incoming_state: Path | None = None) -> Machine:
        overlay_path = live.run_dir / OVERLAY_FILE
        overlay_path.unlink(missing_ok=True)
        await overlay_create(
            base_path=base, base_format=base_format, overlay_path=overlay_path,
            qemu_img=self.config.qemu_img_binary, timeout_s=self.config.qemu_img_timeout_s,
        )
        profile = exhibit.machine_profile()
        extra_paths = await self._extra_overlays(live, exhibit, count=len(profile.extra_media))
        if live.uid_lease is None:
            live.uid_lease = self.uid_lease()
        machine = Machine(
            profile,
            extra_paths=extra_paths,
            run_dir=live.run_dir,
            disk_path=overlay_path,
            qemu_binary=self.config.qemu_binary,
            accelerator=self.accelerator_for(exhibit),
            start_timeout_s=self.config.start_timeout_s,
            qmp_timeout_s=self.config.qmp_timeout_s,
            stop_timeout_s=self.config.stop_timeout_s,
            incoming_state=incoming_state,
            confinement=self.confinement_for(memory_mb=profile.memory_mb, run_as=None,
                                             uid_lease=live.uid_lease),
        )
        live.machine = machine
        try:
            await machine.start()
        except BaseException:
            overlay_path.unlink(missing_ok=True)
            raise
        return machine

    async def _extra_overlays(self, live: _Live, exhibit: Exhibit, *, count: int) -> list[Path]:
        """A throwaway overlay over each of the exhibit's extra media, in order."""
        paths: list[Path] = []
        if count == 0:
            return paths
        media = [medium async for medium in
                 ExhibitMedia.objects.filter(exhibit_id=exhibit.pk).select_related("image")]
        if len(media) != count:
            raise OverlayError("The exhibit's media changed while it started; please try again.")
        for number, medium in enumerate(media):
            path = live.run_dir / f"extra-{number}.qcow2"
            path.unlink(missing_ok=True)
            await overlay_create(
                base_path=Path(medium.image.path), base_format=medium.image.format, overlay_path=path,
                qemu_img=self.config.qemu_img_binary, timeout_s=self.config.qemu_img_timeout_s,
            )
            paths.append(path)
        return paths

    # --- start states ------------------------------------------------------------

    def start_state_key(self, exhibit: Exhibit) -> str:
        return state_key(exhibit.machine_profile(), accelerator=self.accelerator_for(exhibit),
                         qemu=self.qemu_version(), master_sha256=exhibit.image.sha256)

    async def start_state_usable(self, exhibit: Exhibit) -> StartState | None:
        """The exhibit's start state if it matches this portal exactly; a state that
        does not is marked stale (curators see it in the admin) and not used."""
        start = await StartState.objects.filter(exhibit=exhibit, stale=False).afirst()
        if start is None:
            return None
        expected = self.start_state_key(exhibit)
        if start.key != expected:
            reason = f"made for {start.key}; this portal needs {expected}"
            logger.warning("start state of %s is stale: %s", exhibit.slug, reason)
            await StartState.objects.filter(pk=start.pk).aupdate(stale=True, stale_reason=reason)
            return None
        return start

    # --- reset -------------------------------------------------------------------

    async def session_reset(self, *, session_id: str, exhibit: Exhibit) -> None:
        """Put the session back at the exhibit's start state on a fresh overlay."""
        live = self._live.get(session_id)
        if live is None or live.finish_task is not None:
            raise SessionEndedError("This machine has ended.")
        if not live.running.is_set() or live.resetting:
            raise SessionBusyError("The machine is still starting.")
        live.resetting = True
        live.generation += 1
        live.running.clear()
        try:
            old = live.machine
            if live.watch_task is not None:
                live.watch_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await live.watch_task
            # Its overlay is discarded, so it need not shut down in order, and the new
            # machine need not wait for the kernel to tear the old one down: a dying
            # process keeps its own open files while the paths are made anew.
            if old is not None:
                await old.kill_now()
            started, stopped = await asyncio.gather(
                self._machine_start(live, exhibit),
                old.stop() if old is not None else asyncio.sleep(0),
                return_exceptions=True,
            )
            if isinstance(stopped, BaseException):
                logger.error("session %s: the replaced machine did not stop cleanly: %s",
                             session_id, stopped)
            if isinstance(started, asyncio.CancelledError):
                raise started
            if isinstance(started, (OverlayError, MachineError)):
                self._start_failed(live, started)
                raise SessionEndedError(_start_failure(started)) from started
            if isinstance(started, BaseException):
                raise started
            machine = started
            # A reset is input: the visitor is there. The visit's time limit stays.
            live.last_input = asyncio.get_running_loop().time()
            self._warning_clear(live, "idle")
            await VisitorSession.objects.filter(id=session_id).aupdate(pid=machine.pid)
            self._grace_cancel(live)
            self._running(live)
        finally:
            live.resetting = False

    def session_generation(self, session_id: str) -> int | None:
        """Which machine of the session is current: it changes at every reset."""
        live = self._live.get(session_id)
        return live.generation if live else None

    async def _watch(self, live: _Live) -> None:
        """End the session when its QEMU exits by itself or cannot use its disk."""
        machine = live.machine
        assert machine is not None
        exited = asyncio.ensure_future(machine.wait())
        failed_io = asyncio.ensure_future(machine.paused_by_io_error())
        try:
            await asyncio.wait({exited, failed_io}, return_when=asyncio.FIRST_COMPLETED)
            code = exited.result() if exited.done() else None
            io_error = failed_io.result() if failed_io.done() and not failed_io.exception() else None
        finally:
            for task in (exited, failed_io):
                task.cancel()
            await asyncio.gather(exited, failed_io, return_exceptions=True)
        if live.finish_task is not None:
            return  # the broker stopped it
        if io_error is not None and code is None:
            logger.error("session %s: disk error, the guest is paused: %s", live.session_id, io_error)
            full = bool(io_error.get("nospace"))
            detail = ("The server ran out of disk space, so this visit had to end."
                      if full else "The machine's disk failed on the server, so this visit had to end.")
            self._finish_soon(live, reason=Reason.SERVER, detail=detail)
            return
        logger.warning("session %s: QEMU exited by itself with code %s", live.session_id, code)
        if code == 0:
            reason, detail = Reason.VISITOR, "The machine was switched off."
        else:
            reason, detail = Reason.CRASHED, "The machine stopped unexpectedly."
        self._finish_soon(live, reason=reason, detail=detail)

    # --- visitor input and time limits -----------------------------------------

    def session_input(self, *, session_id: str) -> None:
        """The visitor used the keyboard or mouse (or answered an idle warning)."""
        live = self._live.get(session_id)
        if live is None:
            return
        live.last_input = asyncio.get_running_loop().time()
        self._warning_clear(live, "idle")

    def _warning_clear(self, live: _Live, reason: str) -> None:
        if live.warning == reason:
            live.warning = None
            self._notify(live.session_id, {"type": "warning_cleared", "reason": reason})

    def _clock_tick(self) -> None:
        """Warn ahead of the idle and time limits, and end visits that reach one."""
        now = asyncio.get_running_loop().time()
        for live in list(self._live.values()):
            if (live.expires is None or not live.running.is_set() or live.resetting
                    or live.finish_task is not None):
                continue
            idle_end = live.last_input + self.config.idle_s
            reason, deadline = (
                (Reason.TIMEOUT, live.expires) if live.expires <= idle_end else (Reason.IDLE, idle_end)
            )
            left = deadline - now
            if left <= 0:
                detail = (f"The visit reached its time limit of {_minutes(self.config.session_max_s)}."
                          if reason == Reason.TIMEOUT else
                          f"Nobody used the machine for {_minutes(self.config.idle_s)}.")
                self._finish_soon(live, reason=reason, detail=detail)
            elif left <= self.config.warning_s and live.warning != reason:
                live.warning = reason
                self._notify(live.session_id, {"type": "warning", "reason": str(reason),
                                               "seconds_left": max(1, math.ceil(left))})

    # --- viewers and the grace period ------------------------------------------

    async def display_attach(self, *, session_id: str) -> Path:
        """Count a viewer in and return the VNC socket once the machine runs."""
        live = self._live.get(session_id)
        if live is None:
            raise SessionEndedError("This machine has ended.")
        if live.queued:
            raise SessionBusyError("This visit is still waiting for a machine.")
        if live.displays >= self.config.displays_per_session:
            raise ViewerLimitError(self.config.displays_per_session)
        live.displays += 1
        self.watch_attach(session_id=session_id)
        try:
            waiters = [
                asyncio.ensure_future(live.running.wait()),
                asyncio.ensure_future(live.ended.wait()),
            ]
            try:
                await asyncio.wait(
                    waiters,
                    timeout=self.config.start_timeout_s + self.config.qemu_img_timeout_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
            if live.ended.is_set() or live.finish_task is not None:
                raise SessionEndedError("This machine has ended.")
            if not live.running.is_set() or live.machine is None:
                raise DisplayUnavailableError("The machine did not start in time.")
            return live.machine.vnc_path
        except BaseException:
            self.display_detach(session_id=session_id)
            raise

    def watch_attach(self, *, session_id: str) -> bool:
        """Count someone watching the session (its display or its events) in."""
        live = self._live.get(session_id)
        if live is None:
            return False
        live.viewers += 1
        self._grace_cancel(live)
        return True

    def display_detach(self, *, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is not None:
            live.displays = max(0, live.displays - 1)
        self.watch_detach(session_id=session_id)

    def watch_detach(self, *, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is None:
            return
        live.viewers = max(0, live.viewers - 1)
        if live.viewers == 0 and (live.running.is_set() or live.queued):
            self._grace_start(live)

    async def session_wait_ended(self, *, session_id: str, timeout_s: float) -> bool:
        """True once the session has ended (or is not live), False on timeout."""
        live = self._live.get(session_id)
        if live is None:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await live.ended.wait()
        return live.ended.is_set()

    def _grace_start(self, live: _Live) -> None:
        if live.grace_task is None and live.finish_task is None:
            live.grace_task = _task(self._grace(live), name=f"grace-{live.session_id}")

    def _grace_cancel(self, live: _Live) -> None:
        task, live.grace_task = live.grace_task, None
        if task is not None:
            task.cancel()

    async def _grace(self, live: _Live) -> None:
        await asyncio.sleep(self.config.grace_s)
        live.grace_task = None
        self._finish_soon(
            live,
            reason=Reason.VISITOR,
            detail=f"The page was closed for more than {self.config.grace_s:g} s.",
        )

    # --- the end ---------------------------------------------------------------

    async def session_end(self, *, session_id: str, reason: str, detail: str = "") -> None:
        """End a session; returns once the machine is stopped and its files are gone."""
        live = self._live.get(session_id)
        if live is None:
            return
        await asyncio.shield(self._finish_soon(live, reason=reason, detail=detail))

    def _finish_soon(self, live: _Live, *, reason: str, detail: str) -> asyncio.Task[None]:
        if live.finish_task is None:
            live.finish_task = _task(
                self._finish(live, reason=reason, detail=detail),
                name=f"finish-{live.session_id}",
            )
        return live.finish_task

    async def _finish(self, live: _Live, *, reason: str, detail: str) -> None:
        current = asyncio.current_task()
        self._grace_cancel(live)
        was_queued = live.queued
        if was_queued:
            with contextlib.suppress(ValueError):
                self._queue.remove(live)
        try:
            for task in (live.launch_task, live.watch_task):
                if task is not None and task is not current and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if live.machine is not None:
                await live.machine.stop()
                tail = _tail(live.machine.log_path)
                if tail:
                    logger.info("session %s ended (%s); QEMU said: %s",
                                live.session_id, reason, tail)
            await asyncio.to_thread(run_dir_remove, live.run_dir)
        finally:
            try:
                # Recorded before the broker lets go, so the reaper never sees a live
                # row that no broker owns.
                await VisitorSession.objects.filter(id=live.session_id).aupdate(
                    state=State.ENDED, ended_reason=reason, detail=detail,
                    ended_at=timezone.now(), pid=None,
                )
            finally:
                self._live.pop(live.session_id, None)
                # Every trace is gone (its QEMU, which held the uid's lease too, has exited).
                for lease in (live.uid_lease, live.lease):
                    if lease is not None:
                        lease.release()
                if live.started is not None:
                    visit = asyncio.get_running_loop().time() - live.started
                    self._visit_s = 0.8 * self._visit_s + 0.2 * visit
                live.ended.set()
                self._notify_changed(live.session_id)
                self._queue_advance()

    def _queue_advance(self) -> None:
        """Give free machines to the visitors first in line; tell the rest their place."""
        while self._queue and self.active_count < self.config.capacity:
            live = self._queue.popleft()
            live.queued = False
            self._grace_cancel(live)
            self._launch_begin(live, from_queue=True)
        for live in self._queue:
            self._notify_changed(live.session_id)

    async def shutdown(self) -> None:
        """End every live session (reason `server`) and wait for all of it."""
        self._queue.clear()
        lives = list(self._live.values())
        for live in lives:
            live.queued = False
        await asyncio.gather(
            *(self._finish_soon(live, reason=Reason.SERVER, detail="The server stopped.")
              for live in lives),
            return_exceptions=True,
        )
        tasks: list[asyncio.Task[Any]] = [*self._background, *self._helpers]
        self._background = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.config.cgroups is not None:
            # Left if another process of the install still runs machines there.
            await asyncio.to_thread(self.config.cgroups.parent_remove)
        if self.config.uid_base is not None:
            await asyncio.to_thread(uid_leases_tidy, self.config.uid_lease_dir)

    def task_start(self, coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run a helper (such as taking a thumbnail) that the broker owns: it is
        cancelled and awaited when the broker shuts down."""
        task = _task(coroutine, name=name)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return task

    # --- events for the pages --------------------------------------------------

    def _notify_changed(self, session_id: str) -> None:
        self._notify(session_id, {"type": "changed"})

    def _notify(self, session_id: str, event: dict[str, Any]) -> None:
        self._events.put_nowait((session_id, event))

    async def _deliver_events(self) -> None:
        """Hand the broker's events to the pages watching each session."""
        layer = get_channel_layer()
        while True:
            session_id, event = await self._events.get()
            if layer is None:
                continue
            try:
                await layer.group_send(session_group(session_id),
                                       {"type": "session.event", "event": event})
            except Exception:  # a full channel must not stop every other page's events
                logger.exception("session %s: could not deliver %s", session_id, event)

    # --- housekeeping ----------------------------------------------------------

    def background_start(self) -> None:
        """Start the broker's own loops (events, clock, reaper) in the running loop."""
        if self._background:
            return
        self._background = [
            _task(self._deliver_events(), name="broker-events"),
            _task(self._clock(), name="broker-clock"),
            _task(self._reaper(), name="broker-reaper"),
        ]

    async def _clock(self) -> None:
        tick_s = max(0.05, min(1.0, self.config.warning_s / 4, self.config.idle_s / 4))
        while True:
            await asyncio.sleep(tick_s)
            self._clock_tick()
            self._starts.forget_old()

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval_s)
            await self.reap()

    async def reap(self) -> int:
        """One reaper pass: end what no broker owns. Returns how many it cleaned."""
        try:
            count = await sync_to_async(reap_once)(
                run_root=self.config.run_root, is_live=self.is_live, cgroups=self.config.cgroups,
                lease_dir=self.config.leases,
            )
        except Exception:
            logger.exception("the reaper failed; it tries again in %g s",
                             self.config.reaper_interval_s)
            return 0
        if count:
            logger.warning("reaper cleaned up %d sessions that no broker owned", count)
        return count


def _task(coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """A broker task, run outside the context of the request that started it.

    A request's context carries its own thread for database calls, which ends
    with the request; a task that outlives the request and used that context
    would make a new thread and database connection for every later call and
    never close them.
    """
    return asyncio.create_task(coroutine, name=name, context=contextvars.Context())


def session_group(session_id: str) -> str:
    """The channel-layer group of the pages watching one session."""
    return f"session.{session_id}"


def _minutes(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        minutes = int(seconds // 60)
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    return f"{seconds:g} s"


class StartLimiter:
    """How many starts each client made within the window (sliding, in memory)."""

    def __init__(self, *, window_s: float) -> None:
        self.window_s = window_s
        self._starts: dict[str, deque[float]] = {}

    def take(self, limits: dict[str, int]) -> float | None:
        """Count one start against every key, or none if any key is at its limit;
        returns None when allowed, else the seconds until it would be."""
        now = time.monotonic()
        waits = []
        for key, limit in limits.items():
            starts = self._starts.get(key)
            if starts is None:
                continue
            while starts and starts[0] <= now - self.window_s:
                starts.popleft()
            if len(starts) >= limit:
                waits.append(starts[len(starts) - limit] + self.window_s - now)
        if waits:
            return max(waits)
        for key in limits:
            self._starts.setdefault(key, deque()).append(now)
        return None

    def forget_old(self) -> None:
        now = time.monotonic()
        for key in [key for key, starts in self._starts.items()
                    if not starts or starts[-1] <= now - self.window_s]:
            del self._starts[key]


def _tail(path: Path) -> str:
    return log_tail(path, 500).strip().replace("\n", " | ")


def _start_failure(error: OverlayError | MachineError) -> str:
    """A sentence for the visitor: what failed, never a host path or a command line."""
    if isinstance(error, OverlayError):
        return f"The machine could not start: {error.args[0]}"
    if isinstance(error, MachineStartError) and "not installed" in str(error.args[0]):
        return "The machine could not start: the emulator is not installed on this server."
    return "The machine could not start. The error has been logged; please try again later."


async def exhibit_prepare(exhibit: Exhibit, condition: StartCondition) -> StartState:
    """Boot the exhibit once, freeze its start state, and record it (replacing any old one)."""
    if exhibit.machine_profile().extra_media:
        # The warm layer covers the boot disk only; what booting wrote to extra
        # media would be missing under the saved state.
        raise PrepareError("exhibits with extra media always boot cold; instant start is not "
                           "available for them yet")
    config = BrokerConfig.from_settings()
    broker = Broker(config)
    qemu = await asyncio.to_thread(broker.qemu_version)
    # In the run root like a visitor's machine, and owned the same way: a reaper of
    # the install (a serving portal's) leaves it alone while this process lives,
    # and ends what is left of it if this process dies.
    name = f"prepare-{secrets.token_hex(8)}"
    try:
        with machine_lease(name=name, directory=config.leases):
            uid_lease = broker.uid_lease()
            try:
                prepared = await start_state_prepare(
                    name=name,
                    profile=exhibit.machine_profile(),
                    master_path=Path(exhibit.image.path),
                    master_format=exhibit.image.format,
                    master_sha256=exhibit.image.sha256,
                    store=Path(settings.PORTAL_IMAGE_DIR) / "start",
                    run_root=config.run_root,
                    qemu_binary=config.qemu_binary,
                    qemu_img=config.qemu_img_binary,
                    qemu_version=qemu,
                    accelerator=broker.accelerator_for(exhibit),
                    condition=condition,
                    timeouts=(config.start_timeout_s, config.qmp_timeout_s, config.stop_timeout_s),
                    confinement=broker.confinement_for(memory_mb=exhibit.memory_mb, run_as=None,
                                                       uid_lease=uid_lease),
                )
            finally:
                if uid_lease is not None:
                    uid_lease.release()
    except MachineError as error:
        raise PrepareError(f"the exhibit could not be booted: {error}") from error
    finally:
        if config.cgroups is not None:
            await asyncio.to_thread(config.cgroups.parent_remove)
    old = await StartState.objects.filter(exhibit=exhibit).afirst()
    start, _ = await StartState.objects.aupdate_or_create(
        exhibit=exhibit,
        defaults={
            "warm_path": os.fspath(prepared.warm_path), "warm_sha256": prepared.warm_sha256,
            "state_path": os.fspath(prepared.state_path), "state_sha256": prepared.state_sha256,
            "key": prepared.key, "method": condition.describe(),
            "prepare_seconds": prepared.seconds, "stale": False, "stale_reason": "",
        },
    )
    if old is not None and old.warm_path != start.warm_path:
        await asyncio.to_thread(start_state_discard, Path(old.warm_path))
    return start


_broker: Broker | None = None
_broker_loop: asyncio.AbstractEventLoop | None = None


async def get_broker() -> Broker:
    """The process's broker, made on first use inside the running event loop.

    Making it sweeps up what an earlier run of the portal left behind and
    starts the broker's own loops: events, the clock and the reaper.
    """
    global _broker, _broker_loop
    loop = asyncio.get_running_loop()
    if _broker is None or _broker_loop is not loop:
        config = BrokerConfig.from_settings()
        _broker, _broker_loop = Broker(config), loop
        await sync_to_async(_sweep_on_start)(config)
        await asyncio.to_thread(_broker.qemu_version)
        _broker.background_start()
        _stop_with_server(_broker)
    return _broker


def _stop_with_server(broker: Broker) -> None:
    """Under Daphne, end every machine before the server stops.

    Machines that run as their own user do not die with the portal (the kernel
    drops the parent-death signal when QEMU changes user), so a clean stop ends
    them here; after a crash, the reaper does at the next start.
    """
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None or not getattr(reactor, "running", False):
        return  # not served by Daphne: tests and management commands end their own
    from twisted.internet.defer import Deferred

    def before_shutdown() -> Deferred[None]:
        return Deferred.fromFuture(asyncio.ensure_future(broker.shutdown()))

    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)


def _sweep_on_start(config: BrokerConfig) -> None:
    with transaction.atomic():
        # Nothing is live in this new broker; leases keep what other processes own.
        count = reap_once(run_root=config.run_root, is_live=lambda name: False,
                          cgroups=config.cgroups, lease_dir=config.leases)
    if config.uid_base is not None:
        uid_leases_tidy(config.uid_lease_dir)
    if count:
        logger.warning("cleaned up %d sessions left by an earlier run", count)
