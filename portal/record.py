"""The fixity and provenance record: writing its rows and reading an exhibit's.

Owns: `event_record` (one PreservationEvent, with the master's content address
and the exhibit's slug copied in so the row outlives them), the agent names
(`agent_command`, `agent_staff`), an exhibit's record (its own events and
those of every master under it), and the record as JSON (what a bag carries).

Must not: decide anything about what it records.
"""
from __future__ import annotations

from typing import Any

from django.db.models import Q, QuerySet

from .models import DiskImage, Exhibit, PreservationEvent

EventType = PreservationEvent.Type
Outcome = PreservationEvent.Outcome
SHA256 = "SHA-256"
# Automatic work of the portal itself (a derivative's chain check at start, …).
AGENT_PORTAL = "portal"


def agent_command(name: str) -> str:
    return f"command {name}"


def agent_staff(username: str) -> str:
    return f"staff user {username}"


def event_record(*, event_type: str, agent: str, image: DiskImage | None = None,
                 exhibit: Exhibit | None = None, outcome: str = Outcome.SUCCESS, algorithm: str = "",
                 digest: str = "", detail: str = "", related_sha256: str = "") -> PreservationEvent:
    return PreservationEvent.objects.create(
        event_type=event_type, agent=agent, outcome=outcome, algorithm=algorithm, digest=digest,
        detail=detail, image=image, image_sha256=image.sha256 if image is not None else "",
        exhibit=exhibit, exhibit_slug=exhibit.slug if exhibit is not None else "",
        related_sha256=related_sha256)


def exhibit_record(exhibit: Exhibit, *, images: list[DiskImage]) -> QuerySet[PreservationEvent]:
    """The exhibit's record, newest first: its own events and those of its masters
    (`images`: every layer of its chain and its extra media)."""
    return PreservationEvent.objects.filter(
        Q(exhibit=exhibit) | Q(image_sha256__in=[image.sha256 for image in images])).distinct()


def record_json(events: QuerySet[PreservationEvent] | list[PreservationEvent]) -> list[dict[str, Any]]:
    """Rows as JSON objects, oldest first (a bag's `metadata/record.json`)."""
    rows = sorted(events, key=lambda event: (event.at, event.pk))
    return [{"event_type": event.event_type, "at": event.at.isoformat(), "agent": event.agent,
             "outcome": event.outcome, "algorithm": event.algorithm, "digest": event.digest,
             "detail": event.detail, "image_sha256": event.image_sha256,
             "exhibit_slug": event.exhibit_slug, "related_sha256": event.related_sha256}
            for event in rows]
