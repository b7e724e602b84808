"""The warm pool: machines already resumed from an exhibit's start state, paused,
waiting for a visitor.

Owns: this node's pooled machines (each made by the launcher like any other:
its own fresh overlay, uid, cgroup, leases and run directory `m-<hex>`, which
it keeps when a visit has it, so nothing about it names the pool); filling
the pool in the background, up to `PORTAL_POOL_SIZE` machines per published
exhibit with a usable start state, within the node's free places; handing one
to a visit (the visit adopts the machine and its run directory as they are);
and discarding pooled machines: their start state went stale or was replaced,
the node needs the place for a visitor, or the node shuts down.

Must not: decide who gets a machine or on which node (the scheduler), touch a
visit's row, or let a pooled machine run: the keeper starts it (QMP `cont`)
when a visit has it. A pooled machine is never handed to a second visit: once
taken, it leaves the pool for good.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portal.models import Exhibit, StartState
from sessions.machines.machine import Machine, MachineError
from sessions.machines.overlay import OverlayError
from sessions.tasks import task_new

logger = logging.getLogger(__name__)

# The launcher's `machine_new`: an unstarted machine of an exhibit over a base.
MachineNew = Callable[..., Awaitable[Machine]]
# Which start state of an exhibit this node can resume, if any (the launcher's).
StartUsable = Callable[[Exhibit], Awaitable[StartState | None]]


@dataclass(eq=False)
class Pooled:
    """One pooled machine: resumed from a start state, paused, seen by nobody."""

    exhibit_id: int
    slug: str
    # The start state it was resumed from: a visit gets it only while the
    # exhibit's usable state is still this one.
    state_id: int
    state_key: str
    warm_path: str
    machine: Machine
    made_at: float = field(default_factory=time.monotonic)

    @property
    def run_dir(self) -> Path:
        return self.machine.run_dir

    def matches(self, start: StartState) -> bool:
        return (self.state_id, self.state_key, self.warm_path) == (start.pk, start.key, start.warm_path)


class Pool:
    """This node's pooled machines, per exhibit."""

    def __init__(self, *, machine_new: MachineNew, start_usable: StartUsable, size: int,
                 capacity: int, occupied: Callable[[], int], recheck_s: float = 5.0) -> None:
        self._machine_new = machine_new
        self._start_usable = start_usable
        # Machines per exhibit (0: no pool), and the node's places for machines.
        self.size = size
        self.capacity = capacity
        # The node's machines that are not pooled: visits starting, running or ending.
        self._occupied = occupied
        self.recheck_s = recheck_s
        self._machines: dict[int, list[Pooled]] = {}
        # Pooled machines being made (they hold a place already).
        self._making = 0
        self._wake = asyncio.Event()
        self._discards: set[asyncio.Task[None]] = set()
        self._make_task: asyncio.Task[Pooled | None] | None = None
        self._closed = False

    # --- queries -----------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self.size > 0 and not self._closed

    def count(self) -> int:
        return sum(len(machines) for machines in self._machines.values())

    def sizes(self) -> dict[str, int]:
        """Pooled machines per exhibit slug (for /healthz and the admin)."""
        sizes: dict[str, int] = {}
        for machines in self._machines.values():
            for pooled in machines:
                sizes[pooled.slug] = sizes.get(pooled.slug, 0) + 1
        return sizes

    def _room(self) -> bool:
        """A place is free for one more pooled machine."""
        return self._occupied() + self.count() + self._making < self.capacity

    # --- a visit takes one ---------------------------------------------------------

    def take(self, exhibit_id: int, start: StartState) -> Machine | None:
        """A pooled machine resumed from `start` (the exhibit's usable state), or None:
        the visit's from now on, with its run directory and leases, paused until the
        keeper starts it. Machines of the exhibit resumed from any other state are
        discarded."""
        machines = self._machines.get(exhibit_id, [])
        stale = [pooled for pooled in machines if not pooled.matches(start)]
        for pooled in stale:
            machines.remove(pooled)
            self._discard_soon(pooled, why="its start state was replaced")
        taken = None
        while machines and taken is None:
            candidate = machines.pop(0)
            if candidate.machine.held and candidate.machine.returncode is None:
                taken = candidate
            else:
                self._discard_soon(candidate, why="its QEMU is gone")
        self.wake()
        return taken.machine if taken is not None else None

    def drop_exhibit(self, exhibit_id: int, *, why: str) -> None:
        """Discard every pooled machine of the exhibit (its start state is stale or gone)."""
        for pooled in self._machines.pop(exhibit_id, []):
            self._discard_soon(pooled, why=why)

    async def room_make(self) -> None:
        """A visit needs a place the pool holds: pooled machines go first, from the
        exhibit with the most (never a visitor). Returns once their QEMU has exited
        (killed: tens of milliseconds), so the node never runs more than its capacity;
        their files go in the background."""
        victims = []
        while self._occupied() + self.count() + self._making > self.capacity and self.count():
            exhibit_id = max(self._machines, key=lambda key: len(self._machines[key]))
            machines = self._machines[exhibit_id]
            victims.append(machines.pop())
            if not machines:
                del self._machines[exhibit_id]
        for victim in victims:
            await victim.machine.kill_now()
            self._discard_soon(victim, why="the node needs the place for a visitor")
        making = self._make_task
        if self._occupied() + self.count() + self._making > self.capacity and making is not None:
            # The machine being made would take the last place: it is not made.
            making.cancel()
            await asyncio.gather(making, return_exceptions=True)
        await asyncio.gather(*(victim.machine.wait() for victim in victims), return_exceptions=True)

    # --- filling -------------------------------------------------------------------

    def wake(self) -> None:
        """Something changed (a machine taken, a place freed): fill again soon."""
        self._wake.set()

    async def run(self) -> None:
        """Fill the pool now, then whenever woken, and at least every `recheck_s`
        (a start state prepared or made stale by another process)."""
        while not self._closed:
            self._wake.clear()
            try:
                await self.fill()
            except Exception:
                logger.exception("the warm pool could not be filled; trying again in %g s",
                                 self.recheck_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.recheck_s):
                    await self._wake.wait()

    async def fill(self) -> int:
        """Discard what is stale, then make pooled machines, one at a time, while a
        place is free and an exhibit has fewer than its share. Returns how many it made."""
        if not self.enabled:
            if self._machines:
                for exhibit_id in list(self._machines):
                    self.drop_exhibit(exhibit_id, why="the pool is off")
            return 0
        wanted = await self._wanted()
        for exhibit_id in list(self._machines):
            start = wanted.get(exhibit_id, (None, None))[1]
            if start is None:
                self.drop_exhibit(exhibit_id, why="its exhibit has no usable start state")
                continue
            keep = [pooled for pooled in self._machines[exhibit_id]
                    if pooled.matches(start) and pooled.machine.returncode is None]
            for pooled in self._machines[exhibit_id]:
                if pooled not in keep:
                    self._discard_soon(pooled, why="its start state was replaced or its QEMU is gone")
            self._machines[exhibit_id] = keep
        made = 0
        while self.enabled and not self._closed and self._room():
            short = [(len(self._machines.get(exhibit_id, [])), exhibit_id)
                     for exhibit_id in wanted if len(self._machines.get(exhibit_id, [])) < self.size]
            if not short:
                break
            exhibit, start = wanted[min(short)[1]]
            # A task of its own, so that a visitor needing the place can cancel it.
            # Its place is held from now on, before its task first runs.
            self._making += 1
            task = asyncio.create_task(self._make(exhibit, start), name=f"pool-make-{exhibit.slug}")
            self._make_task = task
            try:
                await asyncio.wait({task})
            except BaseException:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._make_task = None
                self._making -= 1
            made_one = None if task.cancelled() else task.result()
            if made_one is None:
                # A start state that cannot be resumed here is not tried again until the next pass.
                wanted.pop(exhibit.pk, None)
                continue
            if self._closed:
                await self._discard(made_one, why="the node is shutting down")
                break
            self._machines.setdefault(exhibit.pk, []).append(made_one)
            made += 1
        return made

    async def _wanted(self) -> dict[int, tuple[Exhibit, StartState]]:
        """Published exhibits whose start state this node can resume, by id."""
        wanted: dict[int, tuple[Exhibit, StartState]] = {}
        exhibits = [start.exhibit async for start in StartState.objects.filter(
            stale=False, exhibit__published=True).select_related("exhibit", "exhibit__image")]
        for exhibit in exhibits:
            if exhibit.machine_profile().extra_media:
                continue
            start = await self._start_usable(exhibit)
            if start is not None:
                wanted[exhibit.pk] = (exhibit, start)
        return wanted

    async def _make(self, exhibit: Exhibit, start: StartState) -> Pooled | None:
        """One machine resumed from the start state and held paused, or None."""
        machine: Machine | None = None
        try:
            machine = await self._machine_new(exhibit, base=Path(start.warm_path), base_format="qcow2",
                                              incoming_state=Path(start.state_path))
            await machine.start(hold=True)
        except BaseException as error:
            if machine is not None:
                # Its files and leases go with it.
                await asyncio.shield(machine.stop())
            if isinstance(error, (OverlayError, MachineError)):
                logger.error("a pooled machine of %s could not be made: %s", exhibit.slug, error)
                return None
            raise
        return Pooled(exhibit_id=exhibit.pk, slug=exhibit.slug, state_id=start.pk,
                      state_key=start.key, warm_path=start.warm_path, machine=machine)

    # --- discarding ----------------------------------------------------------------

    def _discard_soon(self, pooled: Pooled, *, why: str) -> None:
        task = task_new(self._discard(pooled, why=why), name=f"discard-{pooled.run_dir.name}")
        self._discards.add(task)
        task.add_done_callback(self._discards.discard)

    async def _discard(self, pooled: Pooled, *, why: str) -> None:
        """Stop a pooled machine nobody had and delete all of it; its place frees at once
        (it is killed: its overlay is thrown away anyway)."""
        logger.info("pooled machine %s of %s discarded: %s", pooled.run_dir.name, pooled.slug, why)
        try:
            await pooled.machine.kill_now()
            # Its run directory and leases go once it has stopped.
            await pooled.machine.stop()
        finally:
            self.wake()

    async def close(self) -> None:
        """Discard every pooled machine and wait until all of them are gone."""
        self._closed = True
        # A machine being made now is stopped with its files (its task's own clean-up),
        # before the node goes: else it would outlive the portal.
        making = self._make_task
        if making is not None and not making.done():
            making.cancel()
            await asyncio.gather(making, return_exceptions=True)
        for exhibit_id in list(self._machines):
            self.drop_exhibit(exhibit_id, why="the node is shutting down")
        while self._discards:
            await asyncio.gather(*list(self._discards), return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        """The pool as /healthz shows it."""
        return {"size": self.size, "machines": self.count(), "exhibits": self.sizes()}
