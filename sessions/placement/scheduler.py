"""The scheduler: who gets a machine, on which node, and when. Global, in the database.

Owns: placing a new visit on a live node with a free machine place, or in the
one waiting line that all nodes share; a node taking the first in line when
one of its places frees; the rules checked at a start (one live visit per
browser, a cap on live visits per network address, the start limits, the
line's length); a place in line and the estimated wait. Every decision is one
short database transaction that takes the database's own row locks: the node
rows of the nodes a visit may go to (`SELECT … FOR UPDATE SKIP LOCKED`: a node
another start is placing on is passed over, not waited for) and the rows at
the head of the line (the same, so two nodes never take the same visitor).
SQLite, the embedded default with one writer at a time, ignores the locks.

Must not: touch processes, files or the event loop. Its functions are
synchronous (the broker calls them through `sync_to_async`); what a node does
with a placed visit is the broker's and the keeper's business.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Concat, Now
from django.utils import timezone

from sessions.errors import AddressLimitError, CapacityError, RateLimitedError, SessionExistsError
from sessions.models import Node, VisitorSession

logger = logging.getLogger(__name__)
State = VisitorSession.State
# A visit holding a machine place on its node.
PLACED_STATES = (State.STARTING, State.RUNNING)
# The end of a waiting visit's run_dir when its files are on the node holding it.
HELD_HERE_SUFFIX = "/saved"
# The usual visit length before any visit has ended, and how many recent
# visits the estimate learns it from.
VISIT_S_DEFAULT = 5 * 60.0
VISIT_S_SAMPLE = 20


@dataclass(frozen=True)
class SchedulerConfig:
    # This node: its name and how many machines it runs at once.
    node: str
    capacity: int
    # The line's length, for all nodes together.
    queue_max: int
    session_max_s: float = 30 * 60.0
    starts_per_browser: int = 10
    starts_per_address: int = 120
    start_window_s: float = 60.0
    # Live visits (waiting, starting, running) one network address may hold.
    live_per_address: int = 50
    # A node silent this long takes no new visits.
    node_dead_s: float = 10.0


class Limiter(Protocol):
    def take(self, limits: dict[str, int]) -> float | None:
        """Count one start against every key, or none if any key is at its limit;
        None when allowed, else the seconds until it would be."""

    def forget_old(self) -> None:
        """Let go of starts older than the window."""


# --- a new visit -------------------------------------------------------------------


def visit_place(config: SchedulerConfig, limiter: Limiter, *, session_id: str, exhibit_id: int,
                owner: str, address: str, accelerator: str, run_dir: str,
                here_only: bool = False, cited_version: str = "") -> VisitorSession:
    """Record a new visit: on the least busy live node with a free place when nobody
    waits, else at the end of the line (held by this node until a place frees).
    With `here_only` (a visit whose files are on this node: a saved visit going on),
    only this node may start it, now or from the line; its `run_dir` is then where
    those files are, `<run root>/<id>/saved` (`HELD_HERE_SUFFIX`), which tells the
    other nodes to leave it in line.

    Raises SessionExistsError (this browser has a live visit), AddressLimitError,
    CapacityError (the line is full) or RateLimitedError; a refused start counts
    against nobody. `run_dir` is recorded when the visit stays on this node.
    """
    try:
        with transaction.atomic():
            existing = VisitorSession.objects.filter(
                owner=owner, state__in=VisitorSession.LIVE_STATES).values_list("id", flat=True).first()
            if existing is not None:
                raise SessionExistsError(existing)
            if address and VisitorSession.objects.filter(
                    address=address, state__in=VisitorSession.LIVE_STATES).count() >= config.live_per_address:
                raise AddressLimitError(config.live_per_address, retry_after_s=60)
            waiting = VisitorSession.objects.filter(state=State.QUEUED).count()
            node = _node_with_room(config, here_only=here_only) if waiting == 0 else None
            if node is None and waiting >= config.queue_max:
                raise CapacityError(retry_after_s=int(min(3600, max(5, wait_s(config, waiting + 1)))))
            retry = limiter.take({
                f"browser:{owner}": config.starts_per_browser,
                f"address:{address}": config.starts_per_address,
            })
            if retry is not None:
                raise RateLimitedError(retry_after_s=max(1, int(retry + 0.999)))
            here = node in (None, config.node)
            return VisitorSession.objects.create(
                id=session_id, exhibit_id=exhibit_id, owner=owner, address=address,
                cited_version=cited_version,
                state=State.QUEUED if node is None else State.STARTING,
                node=config.node if node is None else node, accelerator=accelerator,
                # Empty until the node it was placed on takes it in (`placed_pending`).
                run_dir=run_dir if here else "",
            )
    except IntegrityError:
        # Another node recorded this browser's live visit at the same moment (the
        # database allows one per browser).
        existing = VisitorSession.objects.filter(
            owner=owner, state__in=VisitorSession.LIVE_STATES).values_list("id", flat=True).first()
        if existing is None:
            raise
        raise SessionExistsError(existing) from None


def _node_with_room(config: SchedulerConfig, *, here_only: bool = False) -> str | None:
    """The live node with the most room in proportion (this one on a tie, or only
    this one), its row locked for the rest of the transaction; None when every
    place is taken."""
    Node.objects.select_for_update().filter(name=config.node).exists()
    others = [] if here_only else list(
        Node.objects.select_for_update(skip_locked=True)
        .filter(heartbeat_at__gte=Now() - timedelta(seconds=config.node_dead_s), capacity__gt=0)
        .exclude(name=config.node).values_list("name", "capacity")
    )
    capacities = {config.node: config.capacity, **dict(others)}
    placed = dict(
        VisitorSession.objects.filter(node__in=list(capacities), state__in=PLACED_STATES)
        .values("node").annotate(count=Count("id")).values_list("node", "count")
    )
    free = [(placed.get(name, 0) / capacity, name != config.node, name)
            for name, capacity in capacities.items()
            if capacity > 0 and placed.get(name, 0) < capacity]
    return min(free)[2] if free else None


# --- the line ----------------------------------------------------------------------


def line_take(config: SchedulerConfig) -> list[tuple[str, str]]:
    """This node's free places go to the first in line: (id, the node that held it
    in line) for each visit taken, first first. Its rows now say STARTING here."""
    with transaction.atomic():
        Node.objects.select_for_update().filter(name=config.node).exists()
        placed = VisitorSession.objects.filter(node=config.node, state__in=PLACED_STATES).count()
        free = config.capacity - placed
        if free <= 0:
            return []
        taken = list(
            VisitorSession.objects.select_for_update(skip_locked=True)
            .filter(state=State.QUEUED)
            # Another node's visit whose files are there (its run_dir names them).
            .exclude(~Q(node=config.node)
                     & Q(run_dir__endswith=Concat(Value("/"), F("id"), Value(HELD_HERE_SUFFIX))))
            .order_by("created_at", "id")
            .values_list("id", "node")[:free]
        )
        if not taken:
            return []
        ids = [session_id for session_id, _ in taken]
        VisitorSession.objects.filter(id__in=ids, state=State.QUEUED, node=config.node).update(
            state=State.STARTING)
        # Held by another node until now: this node takes it in (`placed_pending`).
        VisitorSession.objects.filter(id__in=ids, state=State.QUEUED).exclude(node=config.node).update(
            state=State.STARTING, node=config.node, run_dir="")
        return taken


def line_ids() -> list[str]:
    """Every visit in line, first first."""
    return list(VisitorSession.objects.filter(state=State.QUEUED)
                .order_by("created_at", "id").values_list("id", flat=True))


def line_length() -> int:
    return VisitorSession.objects.filter(state=State.QUEUED).count()


def line_position(session: VisitorSession) -> int | None:
    """1 for the next visitor to get a machine; None when not waiting."""
    if session.state != State.QUEUED:
        return None
    ahead = VisitorSession.objects.filter(state=State.QUEUED).filter(
        Q(created_at__lt=session.created_at) | Q(created_at=session.created_at, id__lt=session.id)
    ).count()
    return ahead + 1


def line_place(config: SchedulerConfig, session: VisitorSession) -> tuple[int | None, float | None]:
    """A session's place in line and its estimated wait, in one call; (None, None)
    when it is not waiting."""
    position = line_position(session)
    return (position, wait_s(config, position)) if position is not None else (None, None)


def line_places(config: SchedulerConfig) -> dict[str, tuple[int, float]]:
    """Every waiting visit's place in line and estimated wait, from one read of the
    line and one of the placed visits: what telling the whole line costs once, not
    once for each visitor in it."""
    clock = line_clock(config)
    return {session_id: (position, clock.wait_s(position))
            for position, session_id in enumerate(line_ids(), start=1)}


def placed_pending(config: SchedulerConfig) -> list[str]:
    """Visits placed on this node that it has not taken in yet (another node placed
    them, or took them from the line for this one)."""
    return list(VisitorSession.objects.filter(node=config.node, state=State.STARTING, run_dir="")
                .values_list("id", flat=True))


@dataclass(frozen=True)
class LineClock:
    """When each placed visit (on every node) is expected to end, soonest first, and
    the usual visit length: what every estimated wait is read from."""

    now: datetime
    ends: list[datetime]
    visit_s: float

    def wait_s(self, position: int) -> float:
        """Estimated wait for a place in line: the position-th machine to become free."""
        if not self.ends:
            return 0.0
        rounds, index = divmod(position - 1, len(self.ends))
        return (self.ends[index] - self.now).total_seconds() + rounds * self.visit_s


def line_clock(config: SchedulerConfig) -> LineClock:
    """Each placed visit is expected to end after the usual visit length (learned
    from recently finished visits), and no later than its time limit."""
    now = timezone.now()
    recent = list(VisitorSession.objects.filter(state=State.ENDED, started_at__isnull=False,
                                                ended_at__isnull=False)
                  .order_by("-ended_at").values_list("started_at", "ended_at")[:VISIT_S_SAMPLE])
    lengths = [(ended - started).total_seconds() for started, ended in recent
               if started is not None and ended is not None]
    visit_s = (sum(lengths) / len(lengths) if lengths
               else min(config.session_max_s, VISIT_S_DEFAULT))
    visit_s = max(1.0, visit_s)
    ends = []
    for started, expires in VisitorSession.objects.filter(state__in=PLACED_STATES).values_list(
            "started_at", "expires_at"):
        expected = (started or now) + timedelta(seconds=visit_s)
        if expires is not None:
            expected = min(expected, expires)
        ends.append(max(now, expected))
    return LineClock(now=now, ends=sorted(ends), visit_s=visit_s)


def wait_s(config: SchedulerConfig, position: int) -> float:
    """Estimated wait for a place in line (see `line_clock`)."""
    return line_clock(config).wait_s(position)


def rows_of(session_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(state, node) of each of the given visits that has a row."""
    if not session_ids:
        return {}
    return {session_id: (state, node) for session_id, state, node in
            VisitorSession.objects.filter(id__in=session_ids).values_list("id", "state", "node")}


# --- start limits ------------------------------------------------------------------


class StartLimiter:
    """How many starts each client made within the window (sliding, in this process):
    the embedded default, for one node."""

    def __init__(self, *, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}

    def take(self, limits: dict[str, int]) -> float | None:
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
        cutoff = self._clock() - self.window_s
        for key in [key for key, starts in self._starts.items() if not starts or starts[-1] <= cutoff]:
            del self._starts[key]


# One start counted against every key, atomically, or against none: the sliding
# window of each key is a sorted set of start times (Redis server time).
_REDIS_TAKE = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local window = tonumber(ARGV[1])
local member = ARGV[2]
local wait = -1
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local limit = tonumber(ARGV[2 + i])
  local count = redis.call('ZCARD', key)
  if count >= limit then
    local oldest = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    local w = tonumber(oldest[2]) + window - now
    if w > wait then wait = w end
  end
end
if wait >= 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, member)
  redis.call('EXPIRE', key, math.ceil(window) + 1)
end
return false
"""


class RedisStartLimiter:
    """The start limits of every node together, kept in Redis (PORTAL_REDIS_URL)."""

    def __init__(self, *, url: str, window_s: float, prefix: str = "portal:starts:") -> None:
        import redis

        self.window_s = window_s
        self._prefix = prefix
        self._client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._script: Any = self._client.register_script(_REDIS_TAKE)

    def take(self, limits: dict[str, int]) -> float | None:
        import secrets

        import redis

        keys = [self._prefix + key for key in limits]
        try:
            wait = self._script(keys=keys, args=[self.window_s, secrets.token_hex(8), *limits.values()])
        except redis.RedisError as error:
            # Redis restarting for a moment must not stop every start: the limits
            # are a guard against floods, and go unchecked only while it is away.
            logger.warning("start limits unchecked: Redis is not answering (%s)", error)
            return None
        return None if wait is None else max(0.0, float(wait))

    def forget_old(self) -> None:
        """Redis lets the keys expire by themselves."""

    def close(self) -> None:
        self._client.close()
