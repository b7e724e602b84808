"""The visit's limits in words, as the exhibit and machine pages state them."""
from __future__ import annotations

from django.test import override_settings

from portal.limits import visit_limits_sentence


@override_settings(PORTAL_SESSION_MAX_S=30 * 60.0, PORTAL_IDLE_S=60.0)
def test_it_states_the_hard_limit_and_the_idle_limit_in_minutes() -> None:
    sentence = visit_limits_sentence()
    assert sentence.startswith("A visit lasts at most 30 minutes, so that everyone gets a turn")
    assert "After 1 minute without a key or a click" in sentence


@override_settings(PORTAL_SESSION_MAX_S=90.0, PORTAL_IDLE_S=1.0)
def test_it_counts_in_seconds_what_is_not_whole_minutes() -> None:
    sentence = visit_limits_sentence()
    assert "at most 90 seconds" in sentence
    assert "After 1 second without" in sentence
