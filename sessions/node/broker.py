"""The broker: the runtime's one front door, joining the scheduler and the keeper.

Owns: the visit's row (`VisitorSession`: written when a visit is created, and
at each step the keeper reports), handing the keeper the visits the scheduler
gives this node (placed here, or taken from the line when a place frees), the
nodes' messages to each other and the pages' events (both through the channel
layer), and the process's background loops (events, the clock, the reaper, the
heartbeat, the node's messages) with their start and shutdown. What is global
(placement, the waiting line, limits) is the scheduler's; what is this node's
(machines, viewers, grace, clocks, reset, ends) is the keeper's; how a machine
is made, the launcher's; the machines kept resumed and paused for the next
visitors, the warm pool's (started with the other loops, closed first at shutdown).

Must not: speak HTTP or WebSocket (views and consumers translate its errors),
or start anything at import time: Daphne has no lifespan events, so the broker
is created lazily inside the running event loop by `get_broker()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import models, transaction
from django.db.models.functions import Now
from django.utils import timezone

from portal.images import (
    Derivation,
    DerivationError,
    derivation_check,
    derivation_work_dir,
    derived_record,
    master_from_visit,
)
from portal.models import DiskImage, Exhibit, PreservationEvent, StartState
from portal.versions import exhibit_of_visit
from sessions.errors import (
    AddressLimitError,
    CapacityError,
    DisplayUnavailableError,
    ExhibitUnavailableError,
    NodeUnreachableError,
    RateLimitedError,
    SessionBusyError,
    SessionEndedError,
    SessionError,
    SessionExistsError,
    ViewerLimitError,
    WatcherLimitError,
    WatcherUnknownError,
    gettext_noop,
)
from sessions.machines.host import machine_lease_take, runas_choose, uid_leases_tidy
from sessions.machines.keys import Keystroke, TypingPace
from sessions.machines.launcher import Launcher, MachineSource, exhibit_picture, exhibit_prepare
from sessions.machines.machine import Machine, MachineError
from sessions.machines.pool import Pool
from sessions.machines.saving import SavedVisit
from sessions.models import Node, VisitorSession, new_session_id
from sessions.node.config import BrokerConfig
from sessions.node.keeper import Keeper, MachineFactory
from sessions.node.metrics import (
    FIRST_FRAME,
    REAPER_CLEANED,
    REAPER_RUNS,
    REFUSALS,
    RESETS,
    STARTS,
    NodeSnapshot,
)
from sessions.node.prints import Prints
from sessions.node.reaper import reap_once
from sessions.node.recordings import Recordings, recordings_expire
from sessions.node.records import VisitRecords, session_group
from sessions.node.sandboxes import Sandboxes
from sessions.node.saves import Saves, SavesConfig, saved_directory, saved_remove
from sessions.node.screen import ScreenReaders
from sessions.node.viewers import Viewers
from sessions.node.visit import LIVE_PHASES, Phase, Visit
from sessions.placement.nodes import (
    DEAD_NODE_DETAIL,
    node_heartbeat,
    node_leave,
    nodes_dead_end,
    nodes_list,
)
from sessions.placement.scheduler import (
    Limiter,
    RedisStartLimiter,
    StartLimiter,
    line_length,
    line_place,
    line_places,
    line_take,
    placed_pending,
    rows_of,
    visit_place,
)
from sessions.placement.watch import watch_link_create, watch_links_revoke
from sessions.tasks import task_new

__all__ = [
    "AddressLimitError", "Broker", "BrokerConfig", "CapacityError", "DisplayUnavailableError",
    "ExhibitUnavailableError", "NodeUnreachableError", "RateLimitedError", "SessionBusyError",
    "SessionEndedError", "SessionError", "SessionExistsError", "StartLimiter", "ViewerLimitError",
    "WatcherLimitError", "WatcherUnknownError",
    "exhibit_picture", "exhibit_prepare", "get_broker", "runas_choose", "session_group",
]

logger = logging.getLogger(__name__)
T = TypeVar("T")

State = VisitorSession.State


@dataclass(frozen=True)
class CatalogueRuntime:
    """What the catalogue's pages ask of the runtime (`portal.runtime.Runtime`), each
    answered by the part of this node that knows."""

    accelerator_for: Callable[[Exhibit], str]
    start_state_usable: Callable[[Exhibit], Awaitable[StartState | None]]
    health: Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class LiveVisit:
    """A live visit as the staff's page shows it."""

    id: str
    exhibit: str
    slug: str
    node: str
    state: str
    age_s: float
    # Seconds since the visitor's last input; None before the machine runs.
    idle_s: float | None


class Broker:
    def __init__(self, config: BrokerConfig, *, machine_factory: MachineFactory | None = None) -> None:
        # Built in order, each from what is built before it.
        self.launcher = Launcher(config.machines)
        self.scheduler = config.scheduler_config()
        self.limiter: Limiter = (
            RedisStartLimiter(url=config.redis_url, window_s=config.start_window_s)
            if config.redis_url else StartLimiter(window_s=config.start_window_s))
        self.pool = Pool(machine_new=self.launcher.machine_new,
                         start_usable=self.launcher.start_state_usable, size=config.pool_size,
                         capacity=config.capacity, occupied=lambda: self.active_count,
                         recheck_s=config.node_heartbeat_s)
        # A factory of the caller's (the tests') has no pool.
        self._pool_runs = machine_factory is None and config.pool_size > 0
        # The rows and the pages' events of this node's visits: the keeper's recorder.
        self.records = VisitRecords(node=config.install, session_max_s=lambda: self.config.session_max_s,
                                    gone=self._visit_gone)
        self.keeper = Keeper(config.keeper_config(), recorder=self.records, machine_factory=machine_factory
                             or MachineSource(self.launcher, self.pool if self._pool_runs else None))
        # Who watches each visit, and each visit's sandbox: the web edge asks them directly.
        self.viewers = Viewers(self.keeper)
        self.sandboxes = Sandboxes(self.keeper)
        self.prints = Prints(self.keeper, limits=config.prints)
        # Take my files: the visit's prints go into its zip too.
        self.sandboxes.extra_files = self.prints.files
        # Saved visits: Save to my computer, and reading a file to resume from.
        self.saves = Saves(self.sandboxes, self.launcher, self.limiter, self._saves_config)
        self.keeper.end_hooks.append(self._saved_forget)
        # Recordings of visits, and the kept ones' exports.
        self.recordings = Recordings(self.keeper, config=config.recordings)
        self.screens = ScreenReaders(self.keeper, interval_s=lambda: self.config.screen_text_interval_s)
        # What the catalogue's pages ask of this node (portal.runtime).
        self.catalogue = CatalogueRuntime(accelerator_for=self.launcher.accelerator_for,
                                          start_state_usable=self.launcher.start_state_usable,
                                          health=self.health)
        self._config = config
        self._create_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        # Set once the broker shuts down: it takes no visit in any more.
        self._closing = False
        self._stopped: asyncio.Future[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        # The nodes the database knew at this node's last heartbeat (for /healthz).
        self._nodes: list[dict[str, Any]] = []
        self._helpers: set[asyncio.Task[Any]] = set()

    @property
    def config(self) -> BrokerConfig:
        return self._config

    @config.setter
    def config(self, config: BrokerConfig) -> None:
        self._config = config
        self.launcher.config = config.machines
        self.scheduler = config.scheduler_config()
        self.keeper.config = config.keeper_config()
        self.recordings.config = config.recordings
        self.pool.capacity = config.capacity

    @property
    def _run_dir_pending(self) -> str:
        """The row's run directory while the visit is this node's and has no machine yet:
        the node's run root (the machine's own directory once it runs). Empty means
        placed on a node that has not taken it in (sessions.placement.scheduler)."""
        return os.fspath(self.config.machines.run_root)

    # --- queries -----------------------------------------------------------------

    @property
    def active_count(self) -> int:
        """This node's machines: starting, running or still stopping."""
        return sum(1 for visit in self.keeper.visits() if visit.phase is not Phase.QUEUED)

    def _machine_running(self, session_id: str) -> Machine:
        """The visit's QEMU, under the guard every action takes (`Keeper.require`)."""
        machine = self.keeper.require(session_id, Phase.RUNNING).machine
        if not isinstance(machine, Machine):
            raise SessionBusyError(gettext_noop("This machine cannot do that."))
        return machine

    def machine(self, session_id: str) -> Machine | None:
        """The running machine of a live session, for tools that talk QMP."""
        machine = self.keeper.machine(session_id)
        return machine if isinstance(machine, Machine) else None

    async def line_place(self, session: VisitorSession) -> tuple[int | None, float | None]:
        """A waiting session's place in the one line of all nodes (1 is next) and
        its estimated wait; (None, None) when it is not waiting."""
        if session.state != State.QUEUED:
            return None, None
        return await sync_to_async(line_place)(self.scheduler, session)

    async def health(self) -> dict[str, Any]:
        """`/healthz`: this install, its QEMU, its capacity and how machines are held."""
        return {
            "ok": True,
            "qemu": self.launcher.qemu_version(),
            "kvm": self.config.machines.accelerator == "kvm",
            "sessions": self.keeper.running_count,
            "capacity": self.config.capacity,
            "accelerator": self.config.machines.accelerator,
            # The one line of all nodes.
            "queued": await sync_to_async(line_length)(),
            "queue_max": self.config.queue_max,
            # How machines are held: their own uid (or the portal's) and the memory limit.
            "qemu_runs_as": "per-machine uid" if self.config.machines.uid_base is not None else "portal user",
            "memory_limit": self.launcher.memory_limit_method,
            # Which install on this host (the node, in a portal of several) answered.
            "install": self.config.install,
            "node": self.config.install,
            # Every node the database knows, as of this node's last heartbeat.
            "nodes": list(self._nodes),
            # The warm pool: machines per exhibit it keeps, and those it holds now by slug.
            "pool": self.pool.describe(),
        }

    # --- start -------------------------------------------------------------------

    async def session_create(self, *, exhibit: Exhibit, owner: str, address: str = "") -> VisitorSession:
        """Record a new session and start its machine: here, on another node with a
        free place, or, when every place is taken, once it is first in line."""
        try:
            session = await self._session_place(exhibit=exhibit, owner=owner, address=address)
        except SessionError as error:
            # Refused: counted by the error's own code.
            REFUSALS.labels(error.code).inc()
            raise
        placed = ("line" if session.state == State.QUEUED
                  else "here" if session.node == self.config.install else "other_node")
        STARTS.labels(placed).inc()
        return session

    async def session_resume(self, *, exhibit: Exhibit, owner: str, address: str, upload: Path,
                             size: int) -> VisitorSession:
        """A new visit that goes on from a saved one (the uploaded file at `upload`): the
        file read into the visit's own directory and checked first (SaveRefusedError,
        SaveMismatchError, SaveTooLargeError), then placed like any start, on this
        node (which has the files), now or from the line."""
        try:
            session = await self._session_place(exhibit=exhibit, owner=owner, address=address,
                                                upload=(upload, size))
        except SessionError as error:
            REFUSALS.labels(error.code).inc()
            raise
        STARTS.labels("line" if session.state == State.QUEUED else "here").inc()
        return session

    async def _session_place(self, *, exhibit: Exhibit, owner: str, address: str,
                             upload: tuple[Path, int] | None = None) -> VisitorSession:
        problem = await exhibit.fixity_problem()
        if problem is not None:
            raise ExhibitUnavailableError(problem)
        session_id = new_session_id()
        # Owned before its row exists, so no reaper of the install (in this
        # process or another) ever takes it for an orphan.
        lease = machine_lease_take(name=session_id, directory=self.config.machines.leases)
        run_root = self.config.machines.run_root
        saved: SavedVisit | None = None
        try:
            if upload is not None:
                saved = await self.saves.upload_read(
                    exhibit=exhibit, upload=upload[0], size=upload[1],
                    directory=saved_directory(run_root, session_id))
            async with self._create_lock:
                session = await sync_to_async(visit_place)(
                    self.scheduler, self.limiter, session_id=session_id, exhibit_id=exhibit.pk,
                    owner=owner, address=address, accelerator=self.launcher.accelerator_for(exhibit),
                    run_dir=self._run_dir_pending if saved is None else os.fspath(saved.directory),
                    here_only=saved is not None, cited_version=exhibit.cited_version or "")
                if session.node != self.config.install:
                    lease.release()
                    self._node_tell(session.node, "node.adopt", session_id)
                else:
                    visit = self.keeper.visit_open(session_id=session_id, exhibit=exhibit,
                                                   queued=session.state == State.QUEUED, lease=lease)
                    visit.resume = saved
                    self.keeper.visit_begin(visit)
        except BaseException:
            if upload is not None:
                await asyncio.shield(asyncio.to_thread(saved_remove, run_root, session_id))
            lease.release()
            raise
        session.exhibit = exhibit
        return session

    def _saves_config(self) -> SavesConfig:
        config = self.config
        return SavesConfig(save_max_bytes=config.save_max_bytes,
                           expanded_max_bytes=config.save_expanded_max_bytes,
                           saves_per_window=config.saves_per_window,
                           qemu_img=config.machines.qemu_img_binary,
                           timeout_s=config.machines.start_timeout_s)

    async def _saved_forget(self, visit: Visit) -> None:
        """What is left of the save a visit was to go on from (it ended in line)."""
        visit.resume = None
        await asyncio.to_thread(saved_remove, self.config.machines.run_root, visit.session_id)

    # --- the visits the scheduler gives this node ------------------------------

    async def line_pull(self, *, moved: bool = False) -> None:
        """Give this node's free places to the first in line (those another node
        held in line are taken in here); with `moved` (the line changed), or when
        anyone was taken, tell everyone in line their new place."""
        if self._closing:
            return
        async with self._pull_lock:
            taken = await sync_to_async(line_take)(self.scheduler)
            for session_id, holder in taken:
                if holder == self.config.install:
                    # False: it is ending already, and its end frees the place again.
                    self.keeper.promote(session_id)
                else:
                    await self.adopt(session_id)
                    self._node_tell(holder, "node.moved", session_id)
            if taken or moved:
                # Everyone's place from one read of the line: each page is told its
                # own, and does not read the whole line again for it.
                places = await sync_to_async(line_places)(self.scheduler)
                for session_id, (position, wait) in places.items():
                    self.records.notify(session_id, {"type": "changed", "line": [position, wait]})

    async def adopt(self, session_id: str) -> bool:
        """Take in a visit placed on this node by another (or taken from another's
        line): start its machine here. False if there is nothing to take in."""
        if self._closing or self.keeper.is_live(session_id):
            return False
        row = await VisitorSession.objects.select_related("exhibit", "exhibit__image").filter(
            id=session_id, node=self.config.install, state=State.STARTING, run_dir="").afirst()
        if row is None or self._closing or self.keeper.is_live(session_id):
            return False
        # A cited version's visit runs that version's machine here too.
        exhibit = await sync_to_async(exhibit_of_visit)(row.exhibit, row.cited_version)
        lease = machine_lease_take(name=session_id, directory=self.config.machines.leases)
        visit = self.keeper.visit_open(session_id=session_id, exhibit=exhibit, queued=False,
                                       lease=lease)
        try:
            await VisitorSession.objects.filter(id=session_id).aupdate(
                run_dir=self._run_dir_pending, accelerator=self.launcher.accelerator_for(exhibit))
        except BaseException:
            self.keeper.visit_drop(visit)
            raise
        self.keeper.visit_begin(visit)
        self.records.changed(session_id)
        return True

    def moved_away(self, session_id: str) -> None:
        """A visit this node held in line was taken by another node: let it go."""
        visit = self.keeper.visit(session_id)
        if visit is not None and visit.phase is Phase.QUEUED:
            self.keeper.visit_release(visit)

    def _visit_gone(self, visit: Visit) -> None:
        """Every trace of a visit is gone: its place goes to the line, or to the pool."""
        if not self._closing:
            self.task_start(self.line_pull(moved=True), name=f"line-{visit.session_id}")
            self.pool.wake()

    # --- what views and consumers ask of a live visit ----------------------------

    async def session_reset(self, *, session_id: str, exhibit: Exhibit) -> None:
        """Put the session back at the exhibit's start state on a fresh overlay."""
        began = self.keeper.now()
        await self.keeper.reset(session_id=session_id, exhibit=exhibit)
        RESETS.observe(self.keeper.now() - began)

    async def session_save_master(self, *, session_id: str, exhibit: Exhibit, derivation: Derivation,
                                  agent: str) -> Exhibit:
        """Save a running visit's disk as a new master over the exhibit's, with a new
        draft exhibit on it. The machine is paused only while its overlay is copied
        (QEMU flushes every write when it pauses); the rest runs on the copy."""
        await sync_to_async(derivation_check)(derivation)
        machine = self._machine_running(session_id)
        work = await asyncio.to_thread(derivation_work_dir)
        copy = work / "visit.qcow2"
        try:
            await machine.execute("stop")
            try:
                await asyncio.to_thread(shutil.copyfile, machine.disk_path, copy)
            finally:
                await machine.execute("cont")
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, work, True)
            raise
        # qemu-img's part in a thread of its own: the shared database thread stays free.
        made = await asyncio.to_thread(master_from_visit, exhibit, visit_copy=copy,
                                       flatten=derivation.flatten)
        try:
            return await sync_to_async(derived_record)(
                exhibit, made=made, derivation=derivation, agent=agent,
                detail=f"The visit was {session_id[:8]}….")
        except DerivationError:
            # The slug was taken meanwhile: a master nothing records does not stay.
            if not await DiskImage.objects.filter(sha256=made.sha256).aexists():
                made.path.unlink(missing_ok=True)
            raise

    def display_first_frame(self, *, session_id: str) -> None:
        """A display of the visit showed its first screen update: once per visit, the
        time since its machine began to start goes into the start-to-first-frame figures."""
        seconds = self.keeper.first_frame(session_id=session_id)
        if seconds is not None:
            FIRST_FRAME.observe(seconds)

    async def visits_live(self) -> list[LiveVisit]:
        """Every node's live visits for the staff's page, oldest first: idle times from
        this node's keeper, or from the holder's latest heartbeat."""
        rows = [row async for row in VisitorSession.objects.select_related("exhibit")
                .filter(state__in=VisitorSession.LIVE_STATES).order_by("created_at")]
        nodes = {node.name: node async for node in Node.objects.annotate(now=Now())}
        now = timezone.now()
        live = []
        for row in rows:
            idle: float | None = None
            if row.node == self.config.install:
                idle = self.keeper.idle_s(row.id)
            elif (node := nodes.get(row.node)) is not None and row.id in node.idle_s:
                idle = float(node.idle_s[row.id]) + max(0.0, (node.now - node.heartbeat_at)
                                                        .total_seconds())
            live.append(LiveVisit(id=row.id, exhibit=row.exhibit.title, slug=row.exhibit.slug,
                                  node=row.node, state=row.state,
                                  age_s=max(0.0, (now - row.created_at).total_seconds()), idle_s=idle))
        return live

    async def metrics_snapshot(self) -> NodeSnapshot:
        """What this node's gauges say now (`/metrics`)."""
        phases: dict[str, int] = {}
        pids = []
        for visit in self.keeper.visits():
            phases[visit.phase.value] = phases.get(visit.phase.value, 0) + 1
            if visit.machine is not None and visit.machine.pid is not None:
                pids.append(visit.machine.pid)
        line = await sync_to_async(line_length)()
        masters = {row["fixity"]: row["count"] async for row in
                   DiskImage.objects.values("fixity").annotate(count=models.Count("pk"))}
        failures = await PreservationEvent.objects.filter(
            event_type=PreservationEvent.Type.FIXITY_CHECK,
            outcome=PreservationEvent.Outcome.FAILURE).acount()
        return NodeSnapshot(
            node=self.config.install, accelerator=self.config.machines.accelerator,
            qemu=await asyncio.to_thread(self.launcher.qemu_version), capacity=self.config.capacity,
            queue_max=self.config.queue_max, phases=phases, line_length=line, machine_pids=pids,
            masters=masters, fixity_failures=failures)

    # --- the visitor's sandbox ---------------------------------------------------

    def display_connection_take(self, *, session_id: str) -> socket.socket | None:
        """The VNC connection opened before the visit's machine ran, for its first
        viewer (see `Machine.display_connection_open`); None for any later one."""
        machine = self.machine(session_id)
        return machine.display_connection_take() if machine is not None else None

    # --- the visitor's tools: typing, the screen, watch links -------------------

    async def keys_send(self, *, session_id: str, strokes: list[Keystroke], stored: bool = True) -> None:
        """Type keystrokes on the visit's running machine, paced; typing is input.
        `stored`: each keystroke types a character (text, not a combination)."""
        pace = TypingPace(hold_ms=self.config.key_hold_ms, interval_s=self.config.keys_interval_s)
        await self.keeper.keys_send(session_id=session_id, strokes=strokes, pace=pace, stored=stored)

    async def session_key_mode_set(self, *, session_id: str, key_mode: str) -> None:
        """Write how the visit's keys reach its guest ("characters" or "positions") on
        its row, which every node reads, and into this node's visit at once."""
        await VisitorSession.objects.filter(id=session_id).aupdate(key_mode=key_mode)
        self.viewers.key_mode_set(session_id=session_id, key_mode=key_mode)

    async def screenshot(self, *, session_id: str) -> bytes:
        """The guest's screen as a PNG at its own resolution, from QEMU (not a viewer)."""
        machine = self._machine_running(session_id)
        # The file is the portal's, handed to QEMU (which may run as another user).
        target = machine.run_dir / f"screenshot-{secrets.token_hex(8)}.png"
        try:
            await machine.screendump(target, image_format="png")
            return await asyncio.to_thread(target.read_bytes)
        except (MachineError, OSError) as error:
            logger.warning("session %s: the screenshot failed: %s", session_id, error)
            raise SessionBusyError(
                gettext_noop("The machine's screen could not be read; try again.")) from error
        finally:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(target.unlink)

    async def watch_link_create(self, *, session_id: str) -> str:
        """A new watch link's token for a live visit."""
        self.keeper.require(session_id, *LIVE_PHASES)
        return await watch_link_create(session_id=session_id)

    async def watch_links_revoke(self, *, session_id: str) -> int:
        """Forget every watch link of the visit and close its watchers' sockets (4401).
        Its watchers are on this node: their sockets are piped to the visit's holder."""
        forgotten = await watch_links_revoke(session_id=session_id)
        self.viewers.watchers_revoke(session_id=session_id)
        return forgotten

    # --- the end -----------------------------------------------------------------

    async def session_end(self, *, session_id: str, reason: str, detail: str = "") -> None:
        """End a session; returns once the machine is stopped and its files are gone.

        A visit another node holds (a request that reached this node while the
        visit moved) is ended by that node, told through the channel layer.
        """
        if self.keeper.is_live(session_id):
            await self.keeper.end(session_id=session_id, reason=reason, detail=detail)
            return
        rows = await sync_to_async(rows_of)([session_id])
        state, node = rows.get(session_id, ("", ""))
        if state in VisitorSession.LIVE_STATES and node and node != self.config.install:
            self._node_tell(node, "node.end", session_id, reason=reason, detail=detail)
            if not await self._until_ended_elsewhere(session_id,
                                                     timeout_s=self.config.machines.stop_timeout_s + 5):
                raise NodeUnreachableError()

    async def _until_ended_elsewhere(self, session_id: str, *, timeout_s: float) -> bool:
        """Until another node records the visit's end: the database is all the nodes
        share, so it is asked every 0.1 s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                for _ in iter(int, 1):
                    rows = await sync_to_async(rows_of)([session_id])
                    if rows.get(session_id, (State.ENDED, ""))[0] not in VisitorSession.LIVE_STATES:
                        return True
                    await asyncio.sleep(0.1)
        return False

    async def shutdown(self) -> None:
        """End every live session (reason `server`) and wait for all of it. Called
        again (the server's stop and its shutdown trigger both ask), it waits for the
        same stop."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._shutdown_once())
        await asyncio.shield(self._stopped)

    async def _shutdown_once(self) -> None:
        # Nobody in line gets a machine here now, and no visit is placed here: the
        # heartbeat stops (it would write the node's row again) and the row goes.
        self._closing = True
        leaving = [task for task in self._background
                   if task.get_name() in {"broker-heartbeat", "broker-node-messages"}]
        for task in leaving:
            task.cancel()
        await asyncio.gather(*leaving, return_exceptions=True)
        try:
            await sync_to_async(node_leave)(name=self.config.install)
        except Exception:
            logger.exception("node %s: could not take its row out", self.config.install)
        pool_task = [task for task in self._background if task.get_name() == "broker-pool"]
        for task in pool_task:
            task.cancel()
        await asyncio.gather(*pool_task, return_exceptions=True)
        await self.pool.close()
        await asyncio.gather(*self.screens.close(), return_exceptions=True)
        await self.keeper.end_all(reason=VisitorSession.EndedReason.SERVER,
                                  detail=gettext_noop("The server stopped."))
        await self.recordings.shutdown()
        tasks: list[asyncio.Task[Any]] = [*self._background, *self._helpers]
        self._background = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.config.machines.cgroups is not None:
            # Left if another process of the install still runs machines there.
            await asyncio.to_thread(self.config.machines.cgroups.parent_remove)
        if self.config.machines.uid_base is not None:
            await asyncio.to_thread(uid_leases_tidy, self.config.machines.uid_lease_dir)

    def task_start(self, coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        """Run a helper (such as taking a thumbnail) that the broker owns: it is
        cancelled and awaited when the broker shuts down."""
        task = task_new(coroutine, name=name)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return task

    # --- events for the pages ----------------------------------------------------

    # --- housekeeping ------------------------------------------------------------

    def background_start(self) -> None:
        """Start the broker's own loops (events, clock, reaper) in the running loop."""
        if self._background:
            return
        self._background = [
            task_new(self.records.deliver(), name="broker-events"),
            task_new(self._clock(), name="broker-clock"),
            task_new(self._reaper(), name="broker-reaper"),
            task_new(self._heartbeat(), name="broker-heartbeat"),
            task_new(self._node_messages(), name="broker-node-messages"),
        ]
        if self._pool_runs:
            self._background.append(task_new(self.pool.run(), name="broker-pool"))

    async def _clock(self) -> None:
        while True:
            tick_s = max(0.05, min(1.0, self.config.warning_s / 4, self.config.idle_s / 4))
            await asyncio.sleep(tick_s)
            self.keeper.clock_tick()
            self.limiter.forget_old()

    async def _heartbeat(self) -> None:
        """Say this node lives; end the visits of nodes that stopped saying so.

        A node judges others only after writing its own heartbeats for a whole
        `node_dead_s`: after the database was away, every node's heartbeat is
        old, and nobody's visits should end for that.
        """
        healthy_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self.heartbeat(judge=healthy_since is not None
                                     and loop.time() - healthy_since >= self.config.node_dead_s)
                if healthy_since is None:
                    healthy_since = loop.time()
            except Exception as error:
                if healthy_since is not None:
                    logger.warning("node %s: heartbeat failed (%s); trying again",
                                   self.config.install, error)
                healthy_since = None
            await asyncio.sleep(self.config.node_heartbeat_s)

    async def heartbeat(self, *, judge: bool) -> None:
        """One heartbeat; with judge, also end the visits of dead nodes."""
        config = self.config
        idle = {visit.session_id: idle for visit in self.keeper.visits()
                if (idle := self.keeper.idle_s(visit.session_id)) is not None}
        known = await sync_to_async(node_heartbeat)(
            name=config.install, capacity=config.capacity, sessions=self.keeper.running_count,
            accelerator=config.machines.accelerator, address=config.node_address, idle_s=idle)
        mine = [visit.session_id for visit in self.keeper.visits()]
        for session_id, (state, node) in (await sync_to_async(rows_of)(mine)).items():
            if state not in VisitorSession.LIVE_STATES:
                # Another node took this one for dead and ended the visit: end the machine too.
                logger.warning("session %s was ended by another node; ending its machine", session_id)
                self._end_soon(session_id)
            elif node != config.install:
                self.moved_away(session_id)
        # What the nodes' messages may have missed: visits placed here, free places.
        for session_id in await sync_to_async(placed_pending)(self.scheduler):
            await self.adopt(session_id)
        await self.line_pull()
        if not known and self._nodes:
            logger.warning("node %s: its heartbeat row was gone; written again", config.install)
        if judge:
            for session_id in await sync_to_async(nodes_dead_end)(
                    own=config.install, dead_after_s=config.node_dead_s):
                self.records.changed(session_id)
        self._nodes = await sync_to_async(nodes_list)(dead_after_s=config.node_dead_s)

    # --- the nodes' messages to each other -----------------------------------------

    def _node_tell(self, node: str, kind: str, session_id: str, **more: str) -> None:
        """Tell another node about one of its visits, through the channel layer.
        Best effort: the heartbeat finds the same within node_heartbeat_s."""
        layer = get_channel_layer()
        if layer is None:
            return

        async def send() -> None:
            try:
                await layer.group_send(node_group(node),
                                       {"type": kind, "session_id": session_id, **more})
            except Exception as error:
                logger.warning("node %s: could not tell %s (%s) about %s: %s",
                               self.config.install, node, kind, session_id, error)

        self.task_start(send(), name=f"tell-{node}")

    async def _node_messages(self) -> None:
        """What other nodes tell this one: a visit placed here, or one it held in
        line that another node took."""
        layer = get_channel_layer()
        if layer is None:
            return
        channel: str | None = None
        while True:
            try:
                if channel is None:
                    channel = await layer.new_channel()
                # Again now and then: Redis forgets a group after its expiry, or when restarted.
                await layer.group_add(node_group(self.config.install), channel)
                async with asyncio.timeout(60):
                    message = await layer.receive(channel)
            except TimeoutError:
                continue
            except Exception as error:
                logger.warning("node %s: its messages are away (%s); trying again",
                               self.config.install, error)
                await asyncio.sleep(self.config.node_heartbeat_s)
                continue
            try:
                if message.get("type") == "node.adopt":
                    await self.adopt(str(message.get("session_id", "")))
                elif message.get("type") == "node.moved":
                    self.moved_away(str(message.get("session_id", "")))
                elif message.get("type") == "node.end":
                    reason = str(message.get("reason", ""))
                    if reason in VisitorSession.EndedReason.values:
                        self.task_start(self.keeper.end(
                            session_id=str(message.get("session_id", "")), reason=reason,
                            detail=str(message.get("detail", ""))), name="end-told")
            except Exception:
                logger.exception("node %s: could not act on %s", self.config.install, message)

    def _end_soon(self, session_id: str) -> None:
        self.task_start(self.keeper.end(session_id=session_id, reason=VisitorSession.EndedReason.SERVER,
                                        detail=DEAD_NODE_DETAIL), name=f"end-{session_id}")

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(self.config.reaper_interval_s)
            await self.reap()

    async def reap(self) -> int:
        """One reaper pass: end what no broker owns. Returns how many it cleaned."""
        REAPER_RUNS.inc()
        try:
            count = await sync_to_async(reap_once)(
                run_root=self.config.machines.run_root, is_live=self.keeper.is_live,
                cgroups=self.config.machines.cgroups, lease_dir=self.config.machines.leases,
                node=self.config.install,
            )
        except Exception:
            logger.exception("the reaper failed; it tries again in %g s",
                             self.config.reaper_interval_s)
            return 0
        try:
            await sync_to_async(recordings_expire)(self.config.recordings.store,
                                                   max_s=self.config.recordings.limits.max_s)
        except Exception:
            logger.exception("expired recordings could not be deleted")
        REAPER_CLEANED.inc(count)
        if count:
            logger.warning("reaper cleaned up %d sessions that no broker owned", count)
        return count


# The API's error code of each refused start (docs/api.md), as /metrics counts them.
def node_group(node: str) -> str:
    """The channel-layer group of one node, for the other nodes' messages."""
    return f"portal.node.{node}"


_broker: Broker | None = None
_broker_loop: asyncio.AbstractEventLoop | None = None
# The broker being made, while it sweeps (callers meanwhile wait for it).
_making: asyncio.Task[Broker] | None = None


def broker_made() -> Broker | None:
    """The process's broker if a request has made it, without making one."""
    return _broker


async def broker_shutdown_if_made() -> bool:
    """End this process's broker if a request has made it (the server stops); True if so."""
    broker = broker_made()
    if broker is None:
        return False
    await broker.shutdown()
    return True


async def get_broker() -> Broker:
    """The process's broker, made on first use inside the running event loop.

    Making it sweeps up what an earlier run of the portal left behind and
    starts the broker's own loops: events, the clock and the reaper.
    Callers that come while it is being made wait for it: nobody uses a broker
    whose sweep has not finished (it could start a machine the sweep then ends).
    """
    global _making
    loop = asyncio.get_running_loop()
    if _broker is not None and _broker_loop is loop:
        return _broker
    if _making is None or _making.get_loop() is not loop:
        _making = loop.create_task(_broker_make(loop), name="broker-make")
    return await asyncio.shield(_making)


async def _broker_make(loop: asyncio.AbstractEventLoop) -> Broker:
    global _broker, _broker_loop, _making
    try:
        config = BrokerConfig.from_settings()
        broker = Broker(config)
        await sync_to_async(_sweep_on_start)(config)
        await asyncio.to_thread(broker.launcher.qemu_version)
        broker.background_start()
        _stop_with_server(broker)
        _broker, _broker_loop = broker, loop
        return broker
    finally:
        _making = None


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
        machines = config.machines
        count = reap_once(run_root=machines.run_root, is_live=lambda name: False,
                          cgroups=machines.cgroups, lease_dir=machines.leases, node=config.install)
    REAPER_RUNS.inc()
    REAPER_CLEANED.inc(count)
    if config.machines.uid_base is not None:
        uid_leases_tidy(config.machines.uid_lease_dir)
    if count:
        logger.warning("cleaned up %d sessions left by an earlier run", count)
