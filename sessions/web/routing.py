"""WebSocket routes. The id part takes anything up to a slash, so that a
malformed id reaches the consumer and gets close code 4404 instead of a failed
handshake."""
from __future__ import annotations

from django.urls import re_path

from sessions.web.consumers import (
    AudioConsumer,
    EventsConsumer,
    UnknownPathConsumer,
    VncConsumer,
    WatchConsumer,
)

websocket_urlpatterns = [
    re_path(r"^ws/sessions/(?P<session_id>[^/]+)/vnc$", VncConsumer.as_asgi()),
    re_path(r"^ws/sessions/(?P<session_id>[^/]+)/audio$", AudioConsumer.as_asgi()),
    re_path(r"^ws/sessions/(?P<session_id>[^/]+)/events$", EventsConsumer.as_asgi()),
    # A watch link's display (its token, not the session's id, in the path).
    re_path(r"^ws/watch/(?P<token>[^/]+)/vnc$", WatchConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
