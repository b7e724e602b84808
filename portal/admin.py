"""The curators' side: masters with their fixity, uploads, exhibits, previews, start states.

Preparing a start state boots a machine, so that action is the runtime's: see
`sessions.admin`, which extends `ExhibitAdmin` with it.
"""
from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from .images import disk_image_import
from .importer import FORMAT_NAMES, ImageError, size_text
from .models import DiskImage, Exhibit, ExhibitMedia, FixityCheck, StartState
from .profile import MachineProfile


class FixityCheckInline(admin.TabularInline):
    model = FixityCheck
    extra = 0
    can_delete = False
    readonly_fields = ("checked_at", "ok", "detail")
    ordering = ("-checked_at",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class UploadForm(forms.Form):
    image = forms.FileField(help_text="Raw floppy or hard-disk image, qcow2, VMDK (single file), "
                                      "VDI, VHD, VHDX or ISO.")
    format = forms.ChoiceField(
        required=False, choices=[("", "From the file's name"),
                                 *[(key, name) for key, name in FORMAT_NAMES.items()]],
        help_text="The contents must be this format, or the image is refused.",
    )


@admin.register(DiskImage)
class DiskImageAdmin(admin.ModelAdmin):
    list_display = ("original_name", "media", "source_format", "virtual_size_bytes", "fixity_flag",
                    "fixity_checked_at", "created_at")
    list_filter = ("fixity", "media")
    readonly_fields = ("sha256", "path", "format", "size_bytes", "original_name", "source_format",
                       "source_sha256", "source_size_bytes", "guest_sha256", "virtual_size_bytes",
                       "media", "fixity", "fixity_checked_at", "created_at")
    inlines = [FixityCheckInline]
    change_list_template = "admin/portal/diskimage/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images come in through the checked upload, never a bare form

    @admin.display(description="Fixity", ordering="fixity")
    def fixity_flag(self, image: DiskImage) -> str:
        if image.fixity == DiskImage.Fixity.FAILED:
            return format_html('<strong style="color:#ba2121">&#9873; {}</strong>', "FAILED")
        return image.get_fixity_display()

    def get_urls(self) -> list[URLPattern]:
        return [path("upload/", self.admin_site.admin_view(self.upload_view),
                     name="portal_diskimage_upload"), *super().get_urls()]

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        """Streamed upload (see portal.uploads), then the same checked import as import_image."""
        if not self.has_change_permission(request):
            return HttpResponse(status=403)
        form = UploadForm()
        if request.method == "POST":
            files = request.FILES  # parsing the upload is what may stop it
            if getattr(request, "upload_too_large", False):
                messages.error(request, "Refused: the file is larger than the limit of "
                                        f"{size_text(settings.PORTAL_IMPORT_MAX_BYTES)} "
                                        "(PORTAL_IMPORT_MAX_BYTES). Nothing was kept.")
            else:
                form = UploadForm(request.POST, files)
                if form.is_valid():
                    upload = form.cleaned_data["image"]
                    try:
                        image = disk_image_import(upload, name=upload.name,
                                                  claim=form.cleaned_data["format"] or None)
                    except ImageError as error:
                        messages.error(request, f"Refused {upload.name}: {error} Nothing was kept.")
                    else:
                        messages.success(request, f"Imported {upload.name} as a "
                                                  f"{image.get_media_display().lower()} master.")
                        location = reverse("admin:portal_diskimage_change", args=[image.pk])
                        if request.headers.get("X-Requested-With") == "XMLHttpRequest":
                            # The page's script goes there itself; a redirect would be
                            # followed by the XHR and use up the message on the way.
                            return JsonResponse({"location": location})
                        return HttpResponseRedirect(location)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Upload a disk image",
                   "opts": self.model._meta, "max_bytes": settings.PORTAL_IMPORT_MAX_BYTES}
        return TemplateResponse(request, "admin/portal/diskimage/upload.html", context)


class ExtraMediaFormSet(forms.BaseInlineFormSet):
    def clean(self) -> None:
        super().clean()
        kinds = [form.cleaned_data["image"].media for form in self.forms
                 if form.cleaned_data.get("image") and not form.cleaned_data.get("DELETE")]
        try:
            MachineProfile(boot=self.instance.boot or "floppy", extra_media=tuple(kinds))
        except ValueError as error:
            raise forms.ValidationError(f"These media do not fit the PC: {error}.") from error


class ExhibitMediaInline(admin.TabularInline):
    model = ExhibitMedia
    formset = ExtraMediaFormSet
    extra = 0
    fields = ("image", "position")
    verbose_name = "extra medium (second floppy, CD-ROM, second hard disk)"


@admin.register(Exhibit)
class ExhibitAdmin(admin.ModelAdmin):
    list_display = ("title", "slug", "year", "boot", "accelerator", "instant_start", "master_fixity",
                    "published")
    list_filter = ("published", "boot")
    prepopulated_fields = {"slug": ("title",)}
    readonly_fields = ("thumbnail_picture", "preview_button")
    change_form_template = "admin/portal/exhibit/change_form.html"
    inlines = [ExhibitMediaInline]
    fieldsets = [
        ("Description", {"fields": ("title", "slug", "year", "publisher", "description",
                                    "thumbnail_picture")}),
        ("Provenance", {"fields": ("provenance_source", "provenance_donor", "provenance_acquired",
                                   "provenance_notes")}),
        ("Machine profile", {"fields": ("image", "boot", "cpu", "memory_mb", "vga", "sound", "mouse",
                                        "accelerator", "speed")}),
        ("Visitors' sandbox", {"fields": ("files_in",)}),
        ("Publication", {"fields": ("published", "preview_button")}),
    ]

    @admin.display(description="Instant start")
    def instant_start(self, exhibit: Exhibit) -> str:
        start = StartState.objects.filter(exhibit=exhibit).first()
        if start is None:
            return "not prepared"
        return f"STALE: {start.stale_reason}" if start.stale else "prepared"

    @admin.display(description="Master")
    def master_fixity(self, exhibit: Exhibit) -> str:
        if exhibit.image.fixity == DiskImage.Fixity.FAILED:
            return format_html('<strong style="color:#ba2121">&#9873; {}</strong>', "fixity FAILED")
        return exhibit.image.get_fixity_display()

    @admin.display(description="Thumbnail")
    def thumbnail_picture(self, exhibit: Exhibit) -> str:
        if not exhibit.thumbnail:
            return "None yet: start a preview and it is taken from the running machine."
        return format_html('<img src="/thumbnails/{}" width="320" alt="">', exhibit.thumbnail)

    @admin.display(description="Preview")
    def preview_button(self, exhibit: Exhibit) -> str:
        if not exhibit.pk:
            return "Save the exhibit first."
        return format_html(
            '<button type="submit" form="preview-form" class="button">{}</button> {}', "Start a preview",
            "Runs this exhibit as visitors would get it (drafts too) and takes its thumbnail.")


@admin.register(StartState)
class StartStateAdmin(admin.ModelAdmin):
    list_display = ("exhibit", "stale", "method", "prepare_seconds", "created_at")
    list_filter = ("stale",)
    readonly_fields = [field.name for field in StartState._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
