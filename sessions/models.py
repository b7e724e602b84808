"""A visitor's session: one throwaway machine from start to discard.

The row is the record that outlives the machine; the broker owns the process.
"""
from __future__ import annotations

import secrets

from django.db import models

from portal.models import Exhibit


def new_session_id() -> str:
    # 192 random bits, URL-safe: unguessable, and short enough for socket paths.
    return secrets.token_urlsafe(24)


class VisitorSession(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        STARTING = "starting"
        RUNNING = "running"
        ENDED = "ended"

    class EndedReason(models.TextChoices):
        VISITOR = "visitor"
        TIMEOUT = "timeout"
        IDLE = "idle"
        CRASHED = "crashed"
        SERVER = "server"

    class KeyMode(models.TextChoices):
        CHARACTERS = "characters"
        POSITIONS = "positions"

    LIVE_STATES = (State.QUEUED, State.STARTING, State.RUNNING)

    id = models.CharField(primary_key=True, max_length=32, default=new_session_id, editable=False)
    exhibit = models.ForeignKey(Exhibit, on_delete=models.PROTECT, related_name="sessions")
    # The random visitor id kept in the browser's (signed) session cookie.
    owner = models.CharField(max_length=64, db_index=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.STARTING)
    # Null until the visit ends, as the API's `ended_reason` is (docs/api.md).
    ended_reason = models.CharField(  # noqa: DJ001
        max_length=8, choices=EndedReason.choices, null=True, blank=True)
    detail = models.TextField(blank=True, help_text="What a person should know about the end.")
    accelerator = models.CharField(max_length=8, blank=True)
    run_dir = models.CharField(max_length=512, blank=True)
    pid = models.IntegerField(null=True, blank=True)
    # The node (install identity, sessions.machines.host) whose machine this is; only that
    # node's reaper, or the sweep after that node died, ends the row.
    node = models.CharField(max_length=40, blank=True, default="", db_index=True)
    # The network address the visit was started from (its live visits are capped).
    address = models.CharField(max_length=45, blank=True, default="", db_index=True)
    # How the visitor's keys reach the guest: "characters" (what the visitor's key
    # prints, typed on the guest's layout) or "positions" (the physical keys). On the
    # row, so every node that serves the visit translates the same way.
    key_mode = models.CharField(max_length=10, choices=KeyMode.choices, default=KeyMode.CHARACTERS)
    # The cited version of the exhibit this visit runs (portal.versions), or empty for the
    # current one: every node that starts, resets or adopts the visit builds that machine.
    cited_version = models.CharField(max_length=12, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state"])]
        constraints = [
            # One live visit per browser, whichever node recorded it.
            models.UniqueConstraint(
                fields=["owner"], condition=models.Q(state__in=["queued", "starting", "running"]),
                name="one_live_visit_per_browser"),
        ]

    def __str__(self) -> str:
        return f"{self.exhibit_id}:{self.id[:8]} {self.state}"

    @property
    def is_live(self) -> bool:
        return self.state in self.LIVE_STATES


class Node(models.Model):
    """A portal node as the others see it: its last heartbeat and what it holds.

    A node writes its own row every PORTAL_NODE_HEARTBEAT_S; a row not written for
    PORTAL_NODE_DEAD_S is a dead node, whose visits any live node ends (reason
    `server`) without touching its machines, which only that node may end.
    """

    name = models.CharField(primary_key=True, max_length=40)
    capacity = models.IntegerField(default=0)
    sessions = models.IntegerField(default=0)
    accelerator = models.CharField(max_length=8, blank=True)
    # Where the other nodes reach this one (host:port of its server), to pipe a
    # visitor's requests for one of its visits to it.
    address = models.CharField(max_length=255, blank=True, default="")
    # Seconds since the visitor's last input, by session id, for this node's running
    # visits as of heartbeat_at (the staff's page of live visits shows them).
    idle_s = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return self.name


class WatchLink(models.Model):
    """A watch link of a visit (`/watch/<token>/`): anyone holding the token may watch
    the machine, read-only, while the visit lives and until its owner revokes it.

    Only the token's SHA-256 is kept, so the database never holds a usable link,
    and any node can find the visit (and so its holder) from a link.
    """

    token_sha256 = models.CharField(primary_key=True, max_length=64, editable=False)
    session = models.ForeignKey(VisitorSession, on_delete=models.CASCADE, related_name="watch_links")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"watch link of {self.session_id[:8]}"
