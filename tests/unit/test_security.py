from __future__ import annotations

import pytest
from django.test import override_settings

from sessions.ids import session_id_valid
from sessions.models import new_session_id
from sessions.web.consumers import origin_allowed


def scope(origin: str | None, host: str = "portal.example:8000") -> dict[str, object]:
    headers = [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"headers": headers}


def test_it_makes_unguessable_ids_that_it_accepts() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(session_id_valid(value) and len(value) == 32 for value in ids)


@pytest.mark.parametrize("value", ["", "abc", "../../etc/passwd", "x" * 31, "x" * 33, "a/b" * 11,
                                   "%2e%2e" + "a" * 26, "a" * 31 + "\n"])
def test_it_rejects_malformed_ids(value: str) -> None:
    assert not session_id_valid(value)


def test_it_allows_the_portals_own_origin() -> None:
    assert origin_allowed(scope("http://portal.example:8000"))


@pytest.mark.parametrize("origin", ["http://evil.example", "http://portal.example:8001",
                                    "null", "file://", "http://portal.example:8000.evil.example"])
def test_it_refuses_other_origins(origin: str) -> None:
    assert not origin_allowed(scope(origin))


@override_settings(PORTAL_ALLOWED_ORIGINS=["https://museum.example"])
def test_it_allows_configured_embedding_sites() -> None:
    assert origin_allowed(scope("https://museum.example"))
    assert not origin_allowed(scope("https://other.example"))


def test_it_lets_non_browser_clients_without_origin_through_to_the_ownership_check() -> None:
    assert origin_allowed(scope(None))
