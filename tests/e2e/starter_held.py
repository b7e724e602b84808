"""A test run by tests/e2e/test_starters.py alone (its name is no test_*.py, so the
suite does not collect it): the fixtures start PostgreSQL, Redis, a served portal
on them with a visitor's machine, and nginx in front, then the test waits for the
stop signal the caller sends. What it started is the fixtures' to stop."""
from __future__ import annotations

import json
import signal

from deploy.services import PostgreSQL, Redis
from tests.e2e.conftest import NginxFactory, PortalFactory
from tests.support.portal_http import PortalVisitor

# The line that tells the caller everything runs, followed by the directories (JSON).
STARTED = "STARTED "


def test_it_serves_until_a_stop_signal(postgresql: PostgreSQL, redis: Redis,
                                       portal_make: PortalFactory, nginx_make: NginxFactory) -> None:
    site = portal_make({"PORTAL_DATABASE_URL": postgresql.url, "PORTAL_REDIS_URL": redis.url},
                       prepare=False, proxy_headers=True)
    edge = nginx_make(site)
    session = PortalVisitor(edge.url).session_start("demo")
    assert session["state"] == "running", session
    print(STARTED + json.dumps([str(site.root), str(edge.directory.parent)]), flush=True)
    signal.pause()
