"""The API's Session object, shared by the HTTP API and the events WebSocket.

Owns: turning a session row (and, for a waiting one, its place in the line)
into the JSON of docs/api.md. Must not: change state; it queries only the line.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sessions.models import VisitorSession
from sessions.node.broker import Broker
from sessions.web.errors import stored_sentence


async def session_json(session: VisitorSession, broker: Broker | None = None, *,
                       place: Sequence[float] | None = None) -> dict[str, Any]:
    """The API's Session. With the broker, a waiting session also tells its place
    in line and the estimated wait (`queue_wait_s`, an extension); `place` is both,
    read already with the whole line's (see `Broker.line_pull`)."""
    def when(value: Any) -> str | None:
        return value.isoformat() if value else None

    position: int | None = None
    wait: float | None = None
    if place is not None and session.state == VisitorSession.State.QUEUED:
        position, wait = int(place[0]), float(place[1])
    elif broker is not None:
        position, wait = await broker.line_place(session)
    return {
        "id": session.id,
        "exhibit": session.exhibit.slug,
        "state": session.state,
        "queue_position": position,
        "queue_wait_s": round(wait) if wait is not None else None,
        "page_url": f"/sessions/{session.id}/",
        "vnc_path": f"/ws/sessions/{session.id}/vnc",
        "audio_path": f"/ws/sessions/{session.id}/audio",
        "events_path": f"/ws/sessions/{session.id}/events",
        "started_at": when(session.started_at),
        "expires_at": when(session.expires_at),
        "ended_reason": session.ended_reason,
        "detail": stored_sentence(session.detail),
        "accelerator": session.accelerator,
        # The node that runs (or ran) the machine: an extension for portals of several nodes.
        "node": session.node or None,
        # How the visitor's keys reach the guest: "characters" or "positions".
        "key_mode": session.key_mode,
    }
