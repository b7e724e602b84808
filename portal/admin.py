from __future__ import annotations

from django.contrib import admin

from .models import DiskImage, Exhibit


@admin.register(DiskImage)
class DiskImageAdmin(admin.ModelAdmin):
    list_display = ("original_name", "sha256", "format", "size_bytes", "created_at")
    readonly_fields = ("sha256", "path", "format", "size_bytes", "original_name", "created_at")


@admin.register(Exhibit)
class ExhibitAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "year", "boot", "published")
    list_filter = ("published", "boot")
    prepopulated_fields = {"slug": ("title",)}
