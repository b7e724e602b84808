"""Nodes as the portal sees them: heartbeats, and the end of a dead node's visits.

Owns: the `Node` rows (one per portal node, written by that node every
PORTAL_NODE_HEARTBEAT_S with the database's own clock, so hosts whose clocks
differ still agree), telling a live node from a dead one, and ending the
visits of a node that stopped writing (reason `server`) so their pages say so
at once and their places count nowhere. One node's sweep and another's never
both end the same node: its row is taken with the database's row lock
(`FOR UPDATE SKIP LOCKED`; SQLite, with one writer at a time, needs none).
Also where a visit held by another live node is reached (`visit_holder_address`),
for the relay that pipes a visitor's requests there (`portal.relay`).

Must not: touch a machine, a process or a file. A dead node's machines are
its own: it ends them itself, through its reaper, when it comes back.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Subquery
from django.db.models.functions import Now

from sessions.errors import gettext_noop
from sessions.ids import session_id_valid
from sessions.machines.host import install_id
from sessions.models import Node, VisitorSession

T = TypeVar("T")

DEAD_NODE_DETAIL = gettext_noop("The server running this machine stopped, so this visit had to end.")


def node_heartbeat(*, name: str, capacity: int, sessions: int, accelerator: str,
                   address: str = "", idle_s: dict[str, float] | None = None) -> bool:
    """Write this node's heartbeat; False if its row was gone (it had been taken for dead)."""
    idle = {key: round(value, 1) for key, value in (idle_s or {}).items()}
    updated = Node.objects.filter(name=name).update(
        capacity=capacity, sessions=sessions, accelerator=accelerator, address=address,
        idle_s=idle, heartbeat_at=Now())
    if updated:
        return True
    Node.objects.update_or_create(name=name, defaults={
        "capacity": capacity, "sessions": sessions, "accelerator": accelerator,
        "address": address, "idle_s": idle, "started_at": Now(), "heartbeat_at": Now()})
    return False


def node_leave(*, name: str) -> None:
    """A node that stops says so before it ends its visits: nothing more is placed
    on it, and what was placed on it but not taken in yet ends (reason `server`)."""
    with transaction.atomic():
        Node.objects.filter(name=name).delete()
        VisitorSession.objects.filter(node=name, state=VisitorSession.State.STARTING, run_dir="").update(
            state=VisitorSession.State.ENDED, ended_reason=VisitorSession.EndedReason.SERVER,
            detail=gettext_noop("The server stopped before this machine could start."),
            ended_at=Now(), pid=None)


def nodes_dead_end(*, own: str, dead_after_s: float) -> list[str]:
    """End the live visits of every other node silent for dead_after_s; their ids."""
    ended: list[str] = []
    with transaction.atomic():
        dead = list(
            Node.objects.select_for_update(skip_locked=True)
            .filter(heartbeat_at__lt=Now() - timedelta(seconds=dead_after_s))
            .exclude(name=own)
        )
        for node in dead:
            ids = list(VisitorSession.objects.filter(
                node=node.name, state__in=VisitorSession.LIVE_STATES).values_list("id", flat=True))
            VisitorSession.objects.filter(id__in=ids, state__in=VisitorSession.LIVE_STATES).update(
                state=VisitorSession.State.ENDED, ended_reason=VisitorSession.EndedReason.SERVER,
                detail=DEAD_NODE_DETAIL, ended_at=Now(), pid=None)
            node.delete()
            ended += ids
    return ended


def nodes_list(*, dead_after_s: float) -> list[dict[str, Any]]:
    """Every node with a row, for /healthz: name, alive, sessions, capacity."""
    alive = set(Node.objects.filter(heartbeat_at__gte=Now() - timedelta(seconds=dead_after_s))
                .values_list("name", flat=True))
    return [{"name": node.name, "alive": node.name in alive, "sessions": node.sessions,
             "capacity": node.capacity} for node in Node.objects.order_by("name")]


def node_holding_address(*, session_id: str, own: str, dead_after_s: float) -> str | None:
    """The address of the live node other than own that holds this live visit; None
    when it is served here: malformed (no query), unknown, ended, held here, or held
    by a node that is dead, gone or has no address.

    One query: the visit's row by its key, and its node's row by its key.
    """
    if not session_id_valid(session_id):
        return None
    holder = (VisitorSession.objects.filter(id=session_id, state__in=VisitorSession.LIVE_STATES)
              .exclude(node__in=[own, ""]).values("node")[:1])
    found = list(Node.objects.filter(name=Subquery(holder),
                                     heartbeat_at__gte=Now() - timedelta(seconds=dead_after_s))
                 .exclude(address="").values_list("address", flat=True)[:1])
    return found[0] if found else None


def lookup_reconnecting(lookup: Callable[[], T]) -> T:
    """Run a relay's look-up in its own thread, once more on a fresh connection if
    the database connection failed.

    The thread keeps its connection between look-ups (no request closes it), so
    the first look-up after a database restart meets a broken one: it is dropped
    and the look-up made again, rather than the visit served by a node that does
    not hold it (which would tell the visitor it had ended).
    """
    try:
        return lookup()
    except DatabaseError:
        connection.close()
    try:
        return lookup()
    except DatabaseError:
        connection.close()
        raise


def _holder_address_here(session_id: str) -> str | None:
    return lookup_reconnecting(lambda: node_holding_address(
        session_id=session_id, own=install_id(), dead_after_s=settings.PORTAL_NODE_DEAD_S))


async def visit_holder_address(session_id: str) -> str | None:
    """`node_holding_address` for this node, with the settings of now (the relay's look-up)."""
    return await sync_to_async(_holder_address_here, thread_sensitive=True)(session_id)
