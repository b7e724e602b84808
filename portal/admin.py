from __future__ import annotations

import asyncio

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from sessions.broker import exhibit_prepare
from sessions.prepare import PrepareError, StartCondition

from .models import DiskImage, Exhibit, StartState

PREPARE_DESKTOP = StartCondition(wait_graphics=True, still_s=2.0)
PREPARE_DOS_PROMPT = StartCondition(wait_text=":\\>", still_s=1.0)


@admin.register(DiskImage)
class DiskImageAdmin(admin.ModelAdmin):
    list_display = ("original_name", "sha256", "format", "size_bytes", "created_at")
    readonly_fields = ("sha256", "path", "format", "size_bytes", "original_name", "created_at")


def _prepare(request: HttpRequest, exhibits: QuerySet[Exhibit], condition: StartCondition) -> None:
    for exhibit in exhibits.select_related("image"):
        try:
            start = asyncio.run(exhibit_prepare(exhibit, condition))
        except PrepareError as error:
            messages.error(request, f"{exhibit.slug}: {error}")
            continue
        messages.success(request, f"{exhibit.slug}: start state prepared in "
                                  f"{start.prepare_seconds:.1f} s ({start.method}).")


@admin.register(Exhibit)
class ExhibitAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "year", "boot", "accelerator", "instant_start", "published")
    list_filter = ("published", "boot")
    prepopulated_fields = {"slug": ("title",)}
    actions = ["prepare_desktop", "prepare_dos_prompt"]

    @admin.display(description="Instant start")
    def instant_start(self, exhibit: Exhibit) -> str:
        start = StartState.objects.filter(exhibit=exhibit).first()
        if start is None:
            return "not prepared"
        return f"STALE: {start.stale_reason}" if start.stale else "prepared"

    @admin.action(description="Prepare start state: boot to the desktop, save once it is still")
    def prepare_desktop(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        _prepare(request, queryset, PREPARE_DESKTOP)

    @admin.action(description="Prepare start state: boot to the DOS prompt, save once it is still")
    def prepare_dos_prompt(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        _prepare(request, queryset, PREPARE_DOS_PROMPT)


@admin.register(StartState)
class StartStateAdmin(admin.ModelAdmin):
    list_display = ("exhibit", "stale", "method", "prepare_seconds", "created_at")
    list_filter = ("stale",)
    readonly_fields = [field.name for field in StartState._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
