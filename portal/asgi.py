"""The ASGI application Daphne serves: HTTP (with static files) and WebSockets,
inside the relay that pipes a request for a visit held by another node to that
node (`portal.relay`).

Origins are checked by the consumers themselves, because the API promises close
code 4403 for a wrong origin, which a handshake refusal cannot carry.
"""
from __future__ import annotations

import os
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
django_application = get_asgi_application()

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
