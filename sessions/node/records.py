"""What the rest of the portal learns of this node's visits: the keeper's
`Recorder`. Each change of a visit is written to its row (the row's state from
the visit's phase, `sessions.node.visit.ROW_STATES`; its machine's pid and run
directory) and told to the pages watching it, through the channel layer, in
order, by one task.

Must not: decide anything about a visit (the keeper does) or reach its machine.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from channels.layers import get_channel_layer
from django.utils import timezone

from sessions.models import VisitorSession
from sessions.node.visit import ROW_STATES, Phase, Visit

logger = logging.getLogger(__name__)

State = VisitorSession.State


def session_group(session_id: str) -> str:
    """The channel-layer group of the pages watching one session."""
    return f"session.{session_id}"


class VisitRecords:
    """The rows and the pages' events of this node's visits."""

    def __init__(self, *, node: str, session_max_s: Callable[[], float],
                 gone: Callable[[Visit], None]) -> None:
        self.node = node
        self._session_max_s = session_max_s
        # Called once every trace of a visit is gone: its place is free (the broker's).
        self._gone = gone
        self._events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def visit_starting(self, visit: Visit) -> None:
        # The scheduler wrote the row when it took the visit from the line.
        await VisitorSession.objects.filter(
            id=visit.session_id, node=self.node, state=State.QUEUED
        ).aupdate(state=ROW_STATES[visit.phase])
        self.changed(visit.session_id)

    async def visit_running(self, visit: Visit) -> None:
        assert visit.started is not None
        assert visit.expires is not None
        assert visit.machine is not None
        now = timezone.now()
        await VisitorSession.objects.filter(id=visit.session_id, state=State.STARTING).aupdate(
            state=ROW_STATES[visit.phase], started_at=now, pid=visit.machine.pid,
            run_dir=os.fspath(visit.machine.run_dir),
            expires_at=now + timedelta(seconds=self._session_max_s()),
        )
        self.changed(visit.session_id)

    async def visit_replaced(self, visit: Visit) -> None:
        assert visit.machine is not None
        await VisitorSession.objects.filter(id=visit.session_id).aupdate(
            pid=visit.machine.pid, run_dir=os.fspath(visit.machine.run_dir))

    async def visit_ended(self, visit: Visit, *, reason: str, detail: str) -> None:
        # Only while this node holds it: a visit in line may have gone to another.
        await VisitorSession.objects.filter(id=visit.session_id, node=self.node).aupdate(
            state=ROW_STATES[Phase.ENDED], ended_reason=reason, detail=detail,
            ended_at=timezone.now(), pid=None,
        )

    def visit_gone(self, visit: Visit) -> None:
        self._gone(visit)

    def notify(self, session_id: str, event: dict[str, Any]) -> None:
        self._events.put_nowait((session_id, event))

    def changed(self, session_id: str) -> None:
        """The visit's row changed: its pages read it again."""
        self.notify(session_id, {"type": "changed"})

    async def deliver(self) -> None:
        """Hand the events to the pages watching each session (the broker's task)."""
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
