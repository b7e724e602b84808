from __future__ import annotations

from django.apps import AppConfig


class VisitorSessionsConfig(AppConfig):
    # Django's own django.contrib.sessions already uses the label "sessions".
    name = "sessions"
    label = "visits"
    verbose_name = "Visitor sessions"
