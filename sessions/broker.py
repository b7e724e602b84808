"""The broker: the only owner of running machines.

Owns: starting a visitor's machine (run directory, overlay, QEMU), knowing
which sessions are live, the grace period after the browser leaves, noticing a
machine that dies, and ending sessions: machine stopped, run directory and
overlay deleted, the row marked ended with its reason. Every background task
it starts is kept, cancelled and awaited by it.

Must not: speak HTTP or WebSocket (views and consumers translate its errors),
or start anything at import time: Daphne has no lifespan events, so the broker
is created lazily inside the running event loop by `get_broker()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from portal.models import Exhibit, ExhibitMedia, StartState

from .machine import (
    Machine,
    MachineError,
    MachineStartError,
    accelerator_resolve,
    kvm_usable,
    log_tail,
    qemu_version,
    state_key,
)
from .models import VisitorSession, new_session_id
from .overlay import OVERLAY_FILE, OverlayError, overlay_create, run_dir_create, run_dir_remove
from .prepare import PrepareError, StartCondition, start_state_discard, start_state_prepare
from .reaper import reap_once

logger = logging.getLogger(__name__)

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
        super().__init__("Every machine on this server is in use. Please try again shortly.")
        self.retry_after_s = retry_after_s


class DisplayUnavailableError(SessionError):
    pass


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

    @classmethod
    def from_settings(cls) -> BrokerConfig:
        return cls(
            run_root=Path(settings.PORTAL_RUN_DIR),
            qemu_binary=settings.PORTAL_QEMU_BINARY,
            qemu_img_binary=settings.PORTAL_QEMU_IMG_BINARY,
            accelerator=accelerator_choose(settings.PORTAL_ACCELERATOR),
            grace_s=settings.PORTAL_GRACE_S,
            start_timeout_s=settings.PORTAL_START_TIMEOUT_S,
            qmp_timeout_s=settings.PORTAL_QMP_TIMEOUT_S,
            stop_timeout_s=settings.PORTAL_STOP_TIMEOUT_S,
            qemu_img_timeout_s=settings.PORTAL_QEMU_IMG_TIMEOUT_S,
            capacity=settings.PORTAL_MAX_SESSIONS or capacity_default(),
        )


def accelerator_choose(setting: str) -> str:
    if setting == "auto":
        return "kvm" if kvm_usable() else "tcg"
    if setting not in {"kvm", "tcg"}:
        raise ValueError(f"PORTAL_ACCELERATOR must be auto, kvm or tcg, not {setting!r}")
    return setting


def capacity_default() -> int:
    """Machines this host can carry: 64 MiB of RAM each past a 1 GiB reserve, 50 a core."""
    memory_mib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    by_memory = max(1, (memory_mib - 1024) // 64)
    by_cores = 50 * (os.cpu_count() or 1)
    return int(min(by_memory, by_cores))


@dataclass(eq=False)
class _Live:
    """A session whose machine is starting or running, as the broker sees it."""

    session_id: str
    run_dir: Path
    machine: Machine | None = None
    running: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    viewers: int = 0
    launch_task: asyncio.Task[None] | None = None
    watch_task: asyncio.Task[None] | None = None
    grace_task: asyncio.Task[None] | None = None
    finish_task: asyncio.Task[None] | None = None
    generation: int = 0
    resetting: bool = False


class Broker:
    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self._live: dict[str, _Live] = {}
        self._create_lock = asyncio.Lock()
        self._qemu_version: str | None = None

    # --- queries ---------------------------------------------------------------

    @property
    def running_count(self) -> int:
        return sum(1 for live in self._live.values() if live.running.is_set())

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

    # --- start -----------------------------------------------------------------

    async def session_create(self, *, exhibit: Exhibit, owner: str) -> VisitorSession:
        """Record a new session and start its machine in the background."""
        problem = await exhibit.fixity_problem()
        if problem is not None:
            raise ExhibitUnavailableError(problem)
        async with self._create_lock:
            existing = await VisitorSession.objects.filter(
                owner=owner, state__in=VisitorSession.LIVE_STATES
            ).afirst()
            if existing is not None:
                raise SessionExistsError(existing.id)
            if len(self._live) >= self.config.capacity:
                raise CapacityError(retry_after_s=30)
            session_id = new_session_id()
            run_dir = self.config.run_root / session_id
            session = await VisitorSession.objects.acreate(
                id=session_id,
                exhibit=exhibit,
                owner=owner,
                state=State.STARTING,
                accelerator=self.accelerator_for(exhibit),
                run_dir=os.fspath(run_dir),
            )
            live = _Live(session_id=session_id, run_dir=run_dir)
            self._live[session_id] = live
        live.launch_task = asyncio.create_task(
            self._launch(live, exhibit), name=f"launch-{session_id}"
        )
        return session

    async def _launch(self, live: _Live, exhibit: Exhibit) -> None:
        try:
            run_dir_create(root=self.config.run_root, name=live.session_id)
            machine = await self._machine_start(live, exhibit)
        except (OverlayError, MachineError) as error:
            self._start_failed(live, error)
            return
        # Viewers may connect now; the record follows, unless the session ended meanwhile.
        self._running(live)
        await VisitorSession.objects.filter(id=live.session_id, state=State.STARTING).aupdate(
            state=State.RUNNING, started_at=timezone.now(), pid=machine.pid
        )

    def _start_failed(self, live: _Live, error: OverlayError | MachineError) -> None:
        """Log what went wrong for the operator and end the session as crashed."""
        logged = error.log_detail if isinstance(error, OverlayError) else str(error)
        logger.error("session %s could not start: %s", live.session_id, logged)
        self._finish_soon(live, reason=Reason.CRASHED, detail=_start_failure(error))

    def _running(self, live: _Live) -> None:
        live.running.set()
        live.watch_task = asyncio.create_task(self._watch(live), name=f"watch-{live.session_id}")
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
            await VisitorSession.objects.filter(id=session_id).aupdate(
                started_at=timezone.now(), pid=machine.pid
            )
            self._grace_cancel(live)
            self._running(live)
        finally:
            live.resetting = False

    def session_generation(self, session_id: str) -> int | None:
        """Which machine of the session is current: it changes at every reset."""
        live = self._live.get(session_id)
        return live.generation if live else None

    async def _watch(self, live: _Live) -> None:
        assert live.machine is not None
        code = await live.machine.wait()
        if live.finish_task is not None:
            return  # the broker stopped it
        logger.warning("session %s: QEMU exited by itself with code %s", live.session_id, code)
        if code == 0:
            reason, detail = Reason.VISITOR, "The machine was switched off."
        else:
            reason, detail = Reason.CRASHED, f"The machine stopped unexpectedly (exit code {code})."
        self._finish_soon(live, reason=reason, detail=detail)

    # --- viewers and the grace period ------------------------------------------

    async def display_attach(self, *, session_id: str) -> Path:
        """Count a viewer in and return the VNC socket once the machine runs."""
        live = self._live.get(session_id)
        if live is None:
            raise SessionEndedError("This machine has ended.")
        live.viewers += 1
        self._grace_cancel(live)
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

    def display_detach(self, *, session_id: str) -> None:
        live = self._live.get(session_id)
        if live is None:
            return
        live.viewers = max(0, live.viewers - 1)
        if live.viewers == 0 and live.running.is_set():
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
            live.grace_task = asyncio.create_task(self._grace(live), name=f"grace-{live.session_id}")

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
            live.finish_task = asyncio.create_task(
                self._finish(live, reason=reason, detail=detail),
                name=f"finish-{live.session_id}",
            )
        return live.finish_task

    async def _finish(self, live: _Live, *, reason: str, detail: str) -> None:
        current = asyncio.current_task()
        self._grace_cancel(live)
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
            self._live.pop(live.session_id, None)
            try:
                await VisitorSession.objects.filter(id=live.session_id).aupdate(
                    state=State.ENDED, ended_reason=reason, detail=detail,
                    ended_at=timezone.now(), pid=None,
                )
            finally:
                live.ended.set()

    async def shutdown(self) -> None:
        """End every live session (reason `server`) and wait for all of it."""
        lives = list(self._live.values())
        await asyncio.gather(
            *(self._finish_soon(live, reason=Reason.SERVER, detail="The server stopped.")
              for live in lives),
            return_exceptions=True,
        )


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
    prepared = await start_state_prepare(
        profile=exhibit.machine_profile(),
        master_path=Path(exhibit.image.path),
        master_format=exhibit.image.format,
        master_sha256=exhibit.image.sha256,
        store=Path(settings.PORTAL_IMAGE_DIR) / "start",
        # Beside, not inside, the run root: a portal starting meanwhile would take a
        # preparing machine there for one left behind and end it.
        run_root=config.run_root.parent / f"{config.run_root.name}-prepare",
        qemu_binary=config.qemu_binary,
        qemu_img=config.qemu_img_binary,
        qemu_version=qemu,
        accelerator=broker.accelerator_for(exhibit),
        condition=condition,
        timeouts=(config.start_timeout_s, config.qmp_timeout_s, config.stop_timeout_s),
    )
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

    Making it sweeps up what an earlier run of the portal left behind.
    """
    global _broker, _broker_loop
    loop = asyncio.get_running_loop()
    if _broker is None or _broker_loop is not loop:
        config = BrokerConfig.from_settings()
        _broker, _broker_loop = Broker(config), loop
        await sync_to_async(_sweep_on_start)(config.run_root)
        await asyncio.to_thread(_broker.qemu_version)
    return _broker


def _sweep_on_start(run_root: Path) -> None:
    with transaction.atomic():
        count = reap_once(run_root=run_root, live_ids=set())
    if count:
        logger.warning("cleaned up %d sessions left by an earlier run", count)
