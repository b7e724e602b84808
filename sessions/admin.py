from __future__ import annotations

from django.contrib import admin

from .models import VisitorSession


@admin.register(VisitorSession)
class VisitorSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "exhibit", "state", "ended_reason", "accelerator", "created_at")
    list_filter = ("state", "ended_reason")
    readonly_fields = [field.name for field in VisitorSession._meta.fields]

    def has_add_permission(self, request: object) -> bool:
        return False
