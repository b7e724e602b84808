"""The ASGI application Daphne serves: HTTP (with static files) and WebSockets,
inside the relay that pipes a request for a visit held by another node to that
node (`portal.relay`).

Origins are checked by the consumers themselves, because the API promises close
code 4403 for a wrong origin, which a handshake refusal cannot carry.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import IO, Any

import django
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.http import HttpResponseBadRequest
from django.http.response import HttpResponseBase

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django.setup(set_prefix=False)  # as django.core.asgi.get_asgi_application does

from portal.errors import json_error, path_wants_json  # noqa: E402
from portal.uploads import uploads_close  # noqa: E402


class Request(ASGIRequest):
    """Django's request, deleting its uploads' files when it ends, even those of a
    malformed form (see `portal.uploads`)."""

    def close(self) -> None:
        try:
            super().close()
        finally:
            uploads_close(self)


class RequestHandler(ASGIHandler):
    """Django's ASGI handler, answering 400 to a request whose Content-Type it cannot read.

    Django reads the header as it makes the request, before any middleware, and
    refuses some bad ones itself but not all: a charset with a NUL byte in it, or
    an RFC 2231 parameter in an unknown charset, raises ValueError there, which
    would answer 500 and log a traceback (found by tests/fuzz)."""

    request_class = Request

    def create_request(self, scope: Mapping[str, Any], body_file: IO[bytes]
                       ) -> tuple[ASGIRequest, None] | tuple[None, HttpResponseBase]:
        try:
            return super().create_request(scope, body_file)
        except ValueError:
            said = "The request's Content-Type header could not be read."
            if path_wants_json(scope.get("path", "")):
                return None, json_error(400, "bad_request", said)
            return None, HttpResponseBadRequest(said, content_type="text/plain")


django_application = RequestHandler()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from portal.relay import Relay  # noqa: E402
from sessions.machines.host import install_id  # noqa: E402
from sessions.placement.nodes import visit_holder_address  # noqa: E402
from sessions.placement.watch import watch_session_id  # noqa: E402
from sessions.web.routing import websocket_urlpatterns  # noqa: E402

# Static files change only with a release (noVNC is pinned by package-lock.json),
# so browsers may keep them for an hour: the machine page then loads noVNC's
# fifty-odd modules from the cache the exhibit page filled.
STATIC_MAX_AGE_S = 3600


class CachedStaticFiles(ASGIStaticFilesHandler):
    def serve(self, request: Any) -> Any:
        response = super().serve(request)
        response["Cache-Control"] = f"public, max-age={STATIC_MAX_AGE_S}"
        return response


application = Relay(
    ProtocolTypeRouter({
        # Static files (the portal's own and noVNC's) are served by the portal
        # itself, so one process is the whole site.
        "http": CachedStaticFiles(django_application),
        "websocket": SessionMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }),
    # Any node takes any request; one for a visit another node holds goes there.
    holder_find=visit_holder_address, node_name=install_id, watch_find=watch_session_id,
)
