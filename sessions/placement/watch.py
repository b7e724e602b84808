"""Watch links: who may watch a visit, read-only, by a token in a link.

Owns: making a watch link's token (192 random bits, URL-safe), keeping only its
SHA-256 in the database (`WatchLink`), finding the visit a token names (any
node can, so the relay pipes a watcher to the node that holds the visit), and
forgetting a visit's links when its owner revokes them.

Must not: open sockets or close them (the keeper closes a visit's watchers on
revoke), or say whether the visit lives (the caller reads the row it gets).
"""
from __future__ import annotations

import hashlib
import re
import secrets

from asgiref.sync import sync_to_async

from sessions.errors import SessionError, gettext_noop
from sessions.models import VisitorSession, WatchLink
from sessions.placement.nodes import lookup_reconnecting

# Tokens are secrets.token_urlsafe(24): 32 characters of the URL-safe alphabet.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def watch_token_valid(token: str) -> bool:
    return bool(_TOKEN.fullmatch(token))


def watch_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


# Watch links one visit may have at once (each POST makes one; revoking forgets them all).
WATCH_LINKS_PER_VISIT = 20


class WatchLinkLimitError(SessionError):
    code = "watch_link_limit"
    status = 409

    def __init__(self) -> None:
        super().__init__(gettext_noop("This visit has %(limit)s watch links already, the most it may "
                                      "have. Revoke them to make a new one."), limit=WATCH_LINKS_PER_VISIT)


async def watch_link_create(*, session_id: str) -> str:
    """A new watch link's token for the visit (the only time the token exists in the clear)."""
    if await WatchLink.objects.filter(session_id=session_id).acount() >= WATCH_LINKS_PER_VISIT:
        raise WatchLinkLimitError()
    token = secrets.token_urlsafe(24)
    await WatchLink.objects.acreate(token_sha256=watch_token_hash(token), session_id=session_id)
    return token


async def watch_links_revoke(*, session_id: str) -> int:
    """Forget every watch link of the visit; returns how many there were."""
    deleted, _ = await WatchLink.objects.filter(session_id=session_id).adelete()
    return deleted


async def watch_session(token: str) -> VisitorSession | None:
    """The visit a watch link names (live or ended), or None for an unknown or revoked one."""
    if not watch_token_valid(token):
        return None
    link = await WatchLink.objects.select_related("session", "session__exhibit").filter(
        token_sha256=watch_token_hash(token)).afirst()
    return link.session if link is not None else None


def _watch_session_id(token: str) -> str | None:
    if not watch_token_valid(token):
        return None
    return lookup_reconnecting(lambda: WatchLink.objects.filter(
        token_sha256=watch_token_hash(token)).values_list("session_id", flat=True).first())


async def watch_session_id(token: str) -> str | None:
    """The id of the visit a watch link names (the relay's look-up), or None."""
    return await sync_to_async(_watch_session_id, thread_sensitive=True)(token)
