"""The scheduler: who gets a machine, and when. Global, not a node's business.

Owns: the first-come waiting line, capacity (how many visits hold a machine
place), the start limits per browser and per network address, the cap on live
visits per address, the wait estimate, and the visit length it is learned
from. It keeps ids, addresses and times, never machines or tasks.

Must not: touch processes, the database or the event loop. Today it keeps its
state in memory for one node; a version for many nodes keeps the same
interface over the database and Redis.
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .errors import AddressLimitError, CapacityError, RateLimitedError


@dataclass(frozen=True)
class SchedulerConfig:
    capacity: int
    queue_max: int
    session_max_s: float = 30 * 60.0
    starts_per_browser: int = 10
    starts_per_address: int = 120
    start_window_s: float = 60.0
    # Live visits (waiting, starting, running) one network address may hold.
    live_per_address: int = 50


@dataclass(eq=False)
class _Admitted:
    """A visit the scheduler counts: waiting in line, or holding a machine place."""

    session_id: str
    address: str
    queued: bool
    # On the clock the scheduler is given: when its machine first ran, and its time limit.
    started: float | None = None
    expires: float | None = None


class Scheduler:
    def __init__(self, config: SchedulerConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._visits: dict[str, _Admitted] = {}
        self._line: deque[_Admitted] = deque()
        self._starts = StartLimiter(window_s=config.start_window_s, clock=clock)
        # A visit's expected length, learned from finished visits, for wait estimates.
        self._visit_s = min(config.session_max_s, 5 * 60.0)

    # --- queries -----------------------------------------------------------------

    @property
    def placed_count(self) -> int:
        """Visits holding a machine place: starting, running or still stopping."""
        return sum(1 for visit in self._visits.values() if not visit.queued)

    @property
    def queue_length(self) -> int:
        return len(self._line)

    @property
    def waiting(self) -> list[str]:
        """The ids in line, first first."""
        return [visit.session_id for visit in self._line]

    def position(self, session_id: str) -> int | None:
        """1 for the next visitor to get a machine; None when not waiting."""
        visit = self._visits.get(session_id)
        if visit is None or not visit.queued:
            return None
        for position, waiting in enumerate(self._line, start=1):
            if waiting is visit:
                return position
        return None

    def wait_s(self, position: int) -> float:
        """Estimated wait for a place in line: the position-th machine to become free.

        Each running visit is expected to end after the usual visit length
        (learned from finished visits), and no later than its time limit.
        """
        now = self._clock()
        ends = []
        for visit in self._visits.values():
            if visit.queued:
                continue
            expected = (visit.started if visit.started is not None else now) + self._visit_s
            if visit.expires is not None:
                expected = min(expected, visit.expires)
            ends.append(max(now, expected))
        if not ends:
            return 0.0
        ends.sort()
        rounds, index = divmod(position - 1, len(ends))
        return ends[index] - now + rounds * self._visit_s

    def live_from(self, address: str) -> int:
        return sum(1 for visit in self._visits.values() if visit.address == address)

    # --- changes -----------------------------------------------------------------

    def admit(self, *, session_id: str, owner: str, address: str = "") -> bool:
        """Count a new visit in: True if it waits in line, False if a machine is free.

        Raises CapacityError (the line is full), AddressLimitError (its address
        has as many live visits as it may) or RateLimitedError (too many starts);
        a refused start counts against nobody.
        """
        queued = self.placed_count >= self.config.capacity
        if queued and len(self._line) >= self.config.queue_max:
            wait = self.wait_s(len(self._line) + 1)
            raise CapacityError(retry_after_s=int(min(3600, max(5, wait))))
        if address and self.live_from(address) >= self.config.live_per_address:
            raise AddressLimitError(self.config.live_per_address, retry_after_s=60)
        retry = self._starts.take({
            f"browser:{owner}": self.config.starts_per_browser,
            f"address:{address}": self.config.starts_per_address,
        })
        if retry is not None:
            raise RateLimitedError(retry_after_s=max(1, int(retry + 0.999)))
        visit = _Admitted(session_id=session_id, address=address, queued=queued)
        self._visits[session_id] = visit
        if queued:
            self._line.append(visit)
        return queued

    def visit_started(self, session_id: str, *, started: float, expires: float) -> None:
        """Its machine runs (times on the scheduler's clock): the wait estimate counts on it."""
        visit = self._visits.get(session_id)
        if visit is not None:
            visit.started, visit.expires = started, expires

    def release(self, session_id: str) -> list[str]:
        """The visit is over (or never began): forget it, and learn its length.

        Returns the visits first in line that now get the freed machine places,
        in order; they hold their places from now on.
        """
        visit = self._visits.pop(session_id, None)
        if visit is not None:
            if visit.queued:
                self._line.remove(visit)
            if visit.started is not None:
                self._visit_s = 0.8 * self._visit_s + 0.2 * (self._clock() - visit.started)
        return self.promote()

    def promote(self) -> list[str]:
        """Give free machine places to the visitors first in line."""
        promoted = []
        while self._line and self.placed_count < self.config.capacity:
            visit = self._line.popleft()
            visit.queued = False
            promoted.append(visit.session_id)
        return promoted

    def line_clear(self) -> list[str]:
        """Empty the line (the server stops): returns who was in it; nobody is promoted."""
        waiting = self.waiting
        for visit in self._line:
            self._visits.pop(visit.session_id, None)
        self._line.clear()
        return waiting

    def forget_old(self) -> None:
        self._starts.forget_old()


class StartLimiter:
    """How many starts each client made within the window (sliding, in memory)."""

    def __init__(self, *, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}

    def take(self, limits: dict[str, int]) -> float | None:
        """Count one start against every key, or none if any key is at its limit;
        returns None when allowed, else the seconds until it would be."""
        now = self._clock()
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
        now = self._clock()
        for key in [key for key, starts in self._starts.items()
                    if not starts or starts[-1] <= now - self.window_s]:
            del self._starts[key]
