"""The runtime's side of the admin: visitor sessions, and the exhibit actions
that boot a machine (preparing a start state).

`portal.admin` registers the exhibits' admin without importing the runtime;
this module extends it with the prepare actions and registers it again.
"""
from __future__ import annotations

import asyncio

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from portal.admin import ExhibitAdmin
from portal.models import Exhibit

from .launcher import exhibit_prepare
from .models import VisitorSession
from .prepare import PrepareError, StartCondition

PREPARE_DESKTOP = StartCondition(wait_graphics=True, still_s=2.0)
PREPARE_DOS_PROMPT = StartCondition(wait_text=":\\>", still_s=1.0)


@admin.register(VisitorSession)
class VisitorSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "exhibit", "state", "ended_reason", "accelerator", "created_at")
    list_filter = ("state", "ended_reason")
    readonly_fields = [field.name for field in VisitorSession._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False


def _prepare(request: HttpRequest, exhibits: QuerySet[Exhibit], condition: StartCondition) -> None:
    for exhibit in exhibits.select_related("image"):
        try:
            start = asyncio.run(exhibit_prepare(exhibit, condition))
        except PrepareError as error:
            messages.error(request, f"{exhibit.slug}: {error}")
            continue
        messages.success(request, f"{exhibit.slug}: start state prepared in "
                                  f"{start.prepare_seconds:.1f} s ({start.method}).")


class ExhibitStartStateAdmin(ExhibitAdmin):
    actions = ["prepare_desktop", "prepare_dos_prompt"]

    @admin.action(description="Prepare start state: boot to the desktop, save once it is still")
    def prepare_desktop(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        _prepare(request, queryset, PREPARE_DESKTOP)

    @admin.action(description="Prepare start state: boot to the DOS prompt, save once it is still")
    def prepare_dos_prompt(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        _prepare(request, queryset, PREPARE_DOS_PROMPT)


admin.site.unregister(Exhibit)
admin.site.register(Exhibit, ExhibitStartStateAdmin)
