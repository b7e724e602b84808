"""The relay's look-ups (sessions.placement): a connection a database restart broke is
replaced at once, so a visit is not served by a node that does not hold it."""
from __future__ import annotations

import pytest
from django.db import OperationalError

from sessions.placement.nodes import lookup_reconnecting


def test_a_look_up_on_a_broken_connection_is_made_again_on_a_fresh_one() -> None:
    answers: list[object] = [OperationalError("server closed the connection unexpectedly"),
                             "10.0.0.12:8001"]

    def lookup() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, str)
        return answer

    assert lookup_reconnecting(lookup) == "10.0.0.12:8001"
    assert not answers


def test_a_database_that_is_away_is_said_after_one_more_try() -> None:
    tries = []

    def lookup() -> str:
        tries.append(1)
        raise OperationalError("could not connect to server")

    with pytest.raises(OperationalError):
        lookup_reconnecting(lookup)
    assert len(tries) == 2
