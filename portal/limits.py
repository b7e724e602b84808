"""The visit's limits in words, for the pages that state them before and during a visit.

Owns: one sentence from the settings (the hard limit of a shared machine, and
the idle limit a visitor can extend). Must not: enforce anything; the runtime does.
"""
from __future__ import annotations

from django.conf import settings
from django.utils.translation import gettext, ngettext


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        count = int(seconds // 60)
        return ngettext("%(count)d minute", "%(count)d minutes", count) % {"count": count}
    count = round(seconds)
    return ngettext("%(count)d second", "%(count)d seconds", count) % {"count": count}


def visit_limits_sentence() -> str:
    """What a visitor may count on: how long a visit lasts at most, and that an idle
    machine asks before it is switched off."""
    return gettext(
        "A visit lasts at most %(visit)s, so that everyone gets a turn at the shared machines. "
        "After %(idle)s without a key or a click the machine asks whether you are still there, "
        "and one press keeps it."
    ) % {"visit": _duration(settings.PORTAL_SESSION_MAX_S), "idle": _duration(settings.PORTAL_IDLE_S)}
