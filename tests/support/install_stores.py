"""A served portal's own database and Redis database on shared production services.

Owns: under `python -m deploy.services` (PORTAL_DATABASE_URL and PORTAL_REDIS_URL
in the test run's environment), giving each install an e2e test serves a
PostgreSQL database of its own on that server and a Redis database number of its
own on that Redis, and removing both once the install has stopped. Installs must
not share them: exhibit slugs and migrations would clash in one database, and the
start limiter's keys (`portal:starts:`) and the channel layer's groups (prefix
`portal`) in one Redis database; neither has a setting for another prefix.

Redis numbers are allotted in Redis itself (`SET … NX` in database 0, which no
portal here uses), so concurrently running xdist workers never take the same one;
the services, and any key a killed worker left, go when deploy.services stops.

Must not: touch a database or a Redis database it did not allot, or run without
those URLs (the default pass keeps each install's SQLite and in-memory layer).
"""
from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

# Debian's redis-server has 16 databases; 0 holds the allotment's own keys.
REDIS_NUMBERS = range(1, 16)
REDIS_ALLOT_TIMEOUT_S = 120.0
REDIS_ALLOT_KEY = "portal-e2e:redis-database:{number}"
DATABASE_PREFIX = "e2e_"


def production_services(environment: Mapping[str, str]) -> bool:
    """Whether this run is on deploy.services's PostgreSQL (and Redis)."""
    return bool(environment.get("PORTAL_DATABASE_URL"))


def _url_with_path(url: str, path: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=path))


@dataclass
class InstallStores:
    """What one install was given: its settings, and what to remove afterwards."""

    settings: dict[str, str] = field(default_factory=dict)
    database: str | None = None
    redis_number: int | None = None
    _database_url: str = ""
    _redis_url: str = ""

    def release(self) -> None:
        """Drop the database and flush and free the Redis number (after the portal stopped)."""
        if self.database is not None:
            import psycopg

            with psycopg.connect(self._database_url, autocommit=True) as connection:
                # FORCE: a connection a killed node left must not keep the database.
                connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = None
        if self.redis_number is not None:
            import redis

            with redis.Redis.from_url(_url_with_path(self._redis_url, f"/{self.redis_number}")) as own:
                own.flushdb()
            with redis.Redis.from_url(_url_with_path(self._redis_url, "/0")) as allotment:
                allotment.delete(REDIS_ALLOT_KEY.format(number=self.redis_number))
            self.redis_number = None


def install_stores_allot(environment: Mapping[str, str], *, named: Mapping[str, str]) -> InstallStores:
    """A new install's own database and Redis number, for what `named` (the test's own
    settings) leaves to the environment. A test that names its database (a URL, or a
    SQLite path that nodes share) keeps it; with a SQLite path the environment's URL
    is blanked, as the URL would win."""
    stores = InstallStores(_database_url=environment.get("PORTAL_DATABASE_URL", ""),
                           _redis_url=environment.get("PORTAL_REDIS_URL", ""))
    if not production_services(environment):
        return stores
    try:
        if "PORTAL_DATABASE_URL" not in named:
            if "PORTAL_DATABASE_PATH" in named:
                stores.settings["PORTAL_DATABASE_URL"] = ""
            else:
                stores.database = _database_create(stores._database_url)
                stores.settings["PORTAL_DATABASE_URL"] = _url_with_path(
                    stores._database_url, f"/{stores.database}")
        if stores._redis_url and "PORTAL_REDIS_URL" not in named:
            stores.redis_number = _redis_number_take(stores._redis_url)
            stores.settings["PORTAL_REDIS_URL"] = _url_with_path(
                stores._redis_url, f"/{stores.redis_number}")
    except BaseException:
        stores.release()
        raise
    return stores


def _database_create(url: str) -> str:
    import psycopg

    name = DATABASE_PREFIX + secrets.token_hex(8)
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return name


def _redis_number_take(url: str) -> int:
    """A Redis database number no running install of this run holds; waits for one."""
    import redis

    deadline = time.monotonic() + REDIS_ALLOT_TIMEOUT_S
    with redis.Redis.from_url(_url_with_path(url, "/0")) as allotment:
        while True:
            for number in REDIS_NUMBERS:
                if allotment.set(REDIS_ALLOT_KEY.format(number=number), "1", nx=True):
                    return number
            if time.monotonic() > deadline:
                raise RuntimeError(f"all {len(REDIS_NUMBERS)} Redis databases stayed taken "
                                   f"for {REDIS_ALLOT_TIMEOUT_S:.0f} s: too many portals at once")
            time.sleep(0.5)
