"""A websockify token plugin: a session id names that session's VNC socket.

Lets operators run websockify as a separate proxy tier in front of the
portal's machines:

    python -m websockify --token-plugin sessions.websockify_tokens.SessionTokens \\
        --token-source portal.settings 127.0.0.1:6080

with the repository on PYTHONPATH and the portal's environment
(PORTAL_DATA_DIR, ...). A client connects to `ws://host:6080/?token=<session id>`.

Owns: turning a token into `("unix_socket", "<run_dir>/vnc.sock")` for a
session that is running, and None (websockify refuses) for anything else:
a malformed id, an unknown, queued, starting or ended session, a socket that
is not there.

Must not: start, stop or change a session (it only reads the row), or trust
the token before checking its form. The session id is the only credential in
this tier (websockify has no Django cookie): it is 192 random bits, and
whoever holds it can watch and drive that machine, exactly as whoever holds
the page URL can in the browser tier.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from sessions.ids import session_id_valid

logger = logging.getLogger(__name__)

VNC_SOCKET_NAME = "vnc.sock"
DEFAULT_SETTINGS_MODULE = "portal.settings"


def django_setup(settings_module: str) -> None:
    """Configure Django once in this process (websockify is not a Django program)."""
    import django
    from django.apps import apps

    if apps.ready:
        return
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", settings_module or DEFAULT_SETTINGS_MODULE)
    django.setup()


def session_vnc_socket(session_id: str) -> Path | None:
    """The VNC socket of a running session, or None. Synchronous: one indexed read."""
    from django.db import close_old_connections

    from sessions.models import VisitorSession

    if not session_id_valid(session_id):
        return None
    close_old_connections()
    row = (
        VisitorSession.objects.filter(id=session_id, state=VisitorSession.State.RUNNING)
        .values_list("run_dir", flat=True)
        .first()
    )
    if not row:
        return None
    socket_path = Path(row) / VNC_SOCKET_NAME
    return socket_path if socket_path.is_socket() else None


class SessionTokens:
    """`--token-plugin sessions.websockify_tokens.SessionTokens --token-source <settings module>`.

    websockify builds the plugin once in its main process and forks a handler
    per connection; Django is set up here, before the fork, and every handler
    opens its own database connection on its first lookup.
    """

    def __init__(self, source: str | None) -> None:
        self.source = source or DEFAULT_SETTINGS_MODULE
        django_setup(self.source)

    def lookup(self, token: str) -> tuple[str, str] | None:
        try:
            socket_path = session_vnc_socket(token)
        except Exception:
            # websockify turns None into a refusal; a broken database must not
            # become a traceback sent to the client.
            logger.exception("session token lookup failed")
            return None
        if socket_path is None:
            logger.info("refused a token that names no running session")
            return None
        # websockify's form for a unix-socket target.
        return ("unix_socket", os.fspath(socket_path))
