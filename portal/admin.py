"""The curators' side: masters with their fixity, uploads, exhibits, previews, start states.

Preparing a start state boots a machine, so that action is the runtime's: see
`sessions.web.admin`, which extends `ExhibitAdmin` with it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from .bags import BagError, bag_export, bag_import
from .images import ImageInUseError, disk_image_delete, disk_image_import, exhibit_delete
from .importer import FORMAT_NAMES, ImageError, size_text
from .models import (
    DiskImage,
    Exhibit,
    ExhibitDisk,
    ExhibitMedia,
    PreservationEvent,
    Recording,
    StartState,
)
from .profile import MachineProfile
from .record import agent_staff, exhibit_record


class PreservationEventInline(admin.TabularInline):
    """A master's record: ingestion, fixity checks, derivation, export, deletion."""

    model = PreservationEvent
    fk_name = "image"
    extra = 0
    can_delete = False
    fields = readonly_fields = ("at", "event_type", "outcome_flag", "agent", "algorithm", "digest", "detail")
    ordering = ("-at", "-pk")
    verbose_name = "event in the record"
    verbose_name_plural = "fixity and provenance record"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="Outcome")
    def outcome_flag(self, event: PreservationEvent) -> str:
        return outcome_html(event)


def outcome_html(event: PreservationEvent) -> str:
    if event.outcome == PreservationEvent.Outcome.FAILURE:
        return format_html('<strong style="color:#ba2121">&#9873; {}</strong>', "FAILURE")
    return event.get_outcome_display()


def record_html(events: list[PreservationEvent]) -> str:
    """An exhibit's record as a table, newest first."""
    if not events:
        return "Nothing recorded yet."
    rows = format_html_join(
        "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td>"
            "<td>{}</td></tr>",
        ((event.at.strftime("%Y-%m-%d %H:%M:%S"), event.event_type, outcome_html(event),
          event.agent, event.image_sha256[:12], f"{event.algorithm} {event.digest}".strip(), event.detail)
         for event in events))
    return format_html('<table class="preservation-record"><thead><tr><th>When</th><th>Event</th>'
                       "<th>Outcome</th><th>Agent</th><th>Master</th><th>Digest</th><th>Detail</th></tr>"
                       "</thead><tbody>{}</tbody></table>", rows)


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
    inlines = [PreservationEventInline]
    change_list_template = "admin/portal/diskimage/change_list.html"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*self.readonly_fields, "parent", "family_tree", "disk_use"]

    @admin.display(description="Family tree")
    def family_tree(self, image: DiskImage) -> str:
        """The layers under this master, then everything built on it, with their exhibits."""
        return family_html(image)

    @admin.display(description="Disk use")
    def disk_use(self, image: DiskImage) -> str:
        use = image_disk_use(image)
        return (f"{size_text(use.own_bytes)} of its own; {size_text(use.shared_bytes)} shared with the "
                f"{len(image.layers()) - 1} layer(s) under it; {size_text(use.built_on_bytes)} in "
                f"{use.built_on} master(s) built on it.")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # images come in through the checked upload, never a bare form

    actions = ["delete_withdrawing"]

    def delete_model(self, request: HttpRequest, obj: DiskImage) -> None:
        self._delete(request, obj, force=False)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[DiskImage]) -> None:
        for image in queryset:
            self.delete_model(request, image)

    def _delete(self, request: HttpRequest, image: DiskImage, *, force: bool) -> None:
        try:
            disk_image_delete(image, agent=agent_staff(request.user.get_username()), force=force)
        except ImageInUseError as error:
            messages.error(request, str(error))

    @admin.action(description="Delete, withdrawing the cited exhibit versions that use them")
    def delete_withdrawing(self, request: HttpRequest, queryset: QuerySet[DiskImage]) -> None:
        for image in queryset:
            self._delete(request, image, force=True)

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
                                                  claim=form.cleaned_data["format"] or None,
                                                  agent=agent_staff(request.user.get_username()))
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


@dataclass(frozen=True)
class DiskUse:
    own_bytes: int
    # The layers under it, which other masters share.
    shared_bytes: int
    built_on: int
    built_on_bytes: int


def image_disk_use(image: DiskImage) -> DiskUse:
    layers = image.layers()[:-1]
    shared = sum(DiskImage.objects.filter(sha256__in=layers).values_list("size_bytes", flat=True))
    descendants = image_descendants(image)
    return DiskUse(own_bytes=image.size_bytes, shared_bytes=shared, built_on=len(descendants),
                   built_on_bytes=sum(child.size_bytes for child, _ in descendants))


def image_descendants(image: DiskImage) -> list[tuple[DiskImage, int]]:
    """Every master built on this one, depth first, with its depth below it."""
    found: list[tuple[DiskImage, int]] = []

    def walk(parent: DiskImage, depth: int) -> None:
        for child in DiskImage.objects.filter(parent=parent).order_by("created_at"):
            found.append((child, depth))
            walk(child, depth + 1)

    walk(image, 1)
    return found


def _image_line(image: DiskImage, *, this: bool = False) -> str:
    exhibits = ", ".join(image.exhibits.values_list("slug", flat=True)) or "no exhibit"
    link = reverse("admin:portal_diskimage_change", args=[image.pk])
    flag = (format_html(' <strong style="color:#ba2121">&#9873; {}</strong>', "fixity FAILED")
            if image.fixity == DiskImage.Fixity.FAILED else "")
    return format_html('<a href="{}">{}</a>{} ({}; {}){}', link, str(image), " (this master)" if this else "",
                       size_text(image.size_bytes), exhibits, flag)


def family_html(image: DiskImage) -> str:
    by_sha = {row.sha256: row for row in DiskImage.objects.filter(sha256__in=image.layers())}
    lines = [(depth, by_sha[sha]) for depth, sha in enumerate(image.layers()[:-1]) if sha in by_sha]
    here = len(lines)
    items = [format_html('<li style="margin-left:{}em">{}</li>', 1.5 * depth, _image_line(layer))
             for depth, layer in lines]
    items.append(format_html('<li style="margin-left:{}em"><strong>{}</strong></li>', 1.5 * here,
                             _image_line(image, this=True)))
    items += [format_html('<li style="margin-left:{}em">{}</li>', 1.5 * (here + depth), _image_line(child))
              for child, depth in image_descendants(image)]
    return format_html('<ul class="family-tree">{}</ul>',
                       format_html_join("", "{}", ((item,) for item in items)))


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
    verbose_name = "extra medium: a further hard disk"
    verbose_name_plural = "extra media (further hard disks; floppies and CDs go into the disk set)"


class DiskSetFormSet(forms.BaseInlineFormSet):
    """The disk set as a whole: each disk fits its drive, one disk per drive at start."""

    def clean(self) -> None:
        super().clean()
        at_start: set[str] = set()
        for form in self.forms:
            data = getattr(form, "cleaned_data", None) or {}
            if not data.get("image") or data.get("DELETE"):
                continue
            disk = ExhibitDisk(image=data["image"], drive=data.get("drive") or "b")
            refusal = disk.refusal()
            if refusal is not None:
                form.add_error("image", refusal)
            if data.get("in_drive_at_start"):
                if disk.drive in at_start:
                    form.add_error("in_drive_at_start", "Another disk is in this drive at start.")
                at_start.add(disk.drive)


class ExhibitDiskInline(admin.TabularInline):
    """The disk set: the disks a visitor changes in the machine's drives, in the order the
    disk box lists them (Position), each with its label, drive and write protection."""

    model = ExhibitDisk
    formset = DiskSetFormSet
    extra = 0
    fields = ("position", "label", "image", "drive", "in_drive_at_start", "write_protected")
    verbose_name = "disk of the disk set"
    verbose_name_plural = "disk set (software on several floppies or CDs, changed while it runs)"


def _translation_field(code: str, field: str) -> str:
    return f"{field}_{code}"


def _translation_form_fields() -> dict[str, forms.Field]:
    fields: dict[str, forms.Field] = {}
    for code, name in settings.LANGUAGES:
        fields[_translation_field(code, "title")] = forms.CharField(
            label=f"Title ({name})", max_length=200, required=False)
        fields[_translation_field(code, "description")] = forms.CharField(
            label=f"Description ({name})", required=False, widget=forms.Textarea(attrs={"rows": 4}))
    return fields


class _ExhibitFormBase(forms.ModelForm):
    """The exhibit's form, with its title and description in each of the portal's
    languages as fields of their own (kept together in `Exhibit.translations`)."""

    class Meta:
        model = Exhibit
        # The admin names the fields (ExhibitAdmin.fieldsets); `translations` is
        # written from the per-language fields.
        fields: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = self.instance.translations if isinstance(self.instance.translations, dict) else {}
        for code, _ in settings.LANGUAGES:
            texts = given.get(code)
            if not isinstance(texts, dict):
                texts = {}
            for field in ("title", "description"):
                self.initial.setdefault(_translation_field(code, field), texts.get(field, ""))

    def save(self, commit: bool = True) -> Exhibit:
        translations = {}
        for code, _ in settings.LANGUAGES:
            texts = {field: str(self.cleaned_data.get(_translation_field(code, field)) or "").strip()
                     for field in ("title", "description")}
            if any(texts.values()):
                translations[code] = {field: text for field, text in texts.items() if text}
        self.instance.translations = translations
        exhibit: Exhibit = super().save(commit=commit)
        return exhibit


# The form class with one title and one description field per language.
ExhibitForm = type("ExhibitForm", (_ExhibitFormBase,), _translation_form_fields())


def translation_fields() -> tuple[str, ...]:
    return tuple(_translation_field(code, field) for code, _ in settings.LANGUAGES
                 for field in ("title", "description"))


@admin.register(Exhibit)
class ExhibitAdmin(admin.ModelAdmin):
    form = ExhibitForm
    list_display = ("title", "slug", "year", "boot", "accelerator", "instant_start", "master_fixity",
                    "published")
    list_filter = ("published", "platform", "boot")
    prepopulated_fields = {"slug": ("title",)}
    readonly_fields = ("thumbnail_picture", "preview_button", "record", "family", "citable_versions")
    raw_id_fields = ("tour",)
    change_form_template = "admin/portal/exhibit/change_form.html"
    inlines = [ExhibitDiskInline, ExhibitMediaInline]
    actions = ["export_bags"]
    change_list_template = "admin/portal/exhibit/change_list.html"
    fieldsets = [
        ("Description", {"fields": ("title", "slug", "year", "publisher", "description",
                                    "platform", "kind", "rights", "thumbnail_picture")}),
        ("Translations", {"fields": ("language", *translation_fields()), "classes": ("collapse",),
                          "description": "The title and description in more languages. A visitor "
                                         "whose browser or choice asks for one of these reads it; "
                                         "everyone else reads the original above, in its language."}),
        ("Provenance", {"fields": ("provenance_source", "provenance_donor", "provenance_acquired",
                                   "provenance_notes")}),
        ("Machine profile", {"fields": ("image", "boot", "cpu", "memory_mb", "vga", "mouse",
                                        "accelerator", "speed", "code_page", "keyboard")}),
        ("Sound", {"fields": ("sound_adlib", "sound_sb16"),
                   "description": "Every exhibit has a PC speaker. Add the cards its software "
                                  "plays music and sound on; visitors hear them in the browser."}),
        ("Visitors' sandbox", {"fields": ("files_in",)}),
        ("Printer", {"fields": ("printer", "paper"),
                     "description": "Every machine has a printer on LPT1; what the guest prints "
                                    "reaches the visitor as a PDF. See the curators' guide for "
                                    "setting up Windows 3.1 to print to it."}),
        ("Publication", {"fields": ("published", "preview_button", "family", "citable_versions")}),
        ("Recordings and tour", {"fields": ("visitors_may_record", "tour"),
                                 "description": "Curators may record any of their visits (Record, on "
                                                "the machine's page). A kept recording of this exhibit "
                                                "may be its tour: its page shows it, and visitors "
                                                "waiting in line watch it."}),
        ("Fixity and provenance record", {"fields": ("record",), "classes": ("collapse",)}),
    ]

    @admin.display(description="Derived from and into")
    def family(self, exhibit: Exhibit) -> str:
        if not exhibit.pk:
            return "Save the exhibit first."
        parent = (format_html('<a href="{}">{}</a>', reverse("admin:portal_exhibit_change",
                                                              args=[exhibit.parent_id]), exhibit.parent)
                  if exhibit.parent_id else "no other exhibit")
        children = format_html_join(", ", '<a href="{}">{}</a>', (
            (reverse("admin:portal_exhibit_change", args=[child.pk]), child.title)
            for child in exhibit.derivatives.all())) or "none yet"
        return format_html("Derived from {}; derivatives: {}. Save one from a preview's page "
                           "(Save as new master).", parent, children)

    @admin.display(description="Citable versions")
    def citable_versions(self, exhibit: Exhibit) -> str:
        """Each configuration the exhibit has had, newest first, and whether it was withdrawn."""
        if not exhibit.pk:
            return "Save the exhibit first."
        row = '<tr><td><a href="{}"><code>{}</code></a>{}</td><td>{}</td><td>{}</td></tr>'
        rows = format_html_join("", row, (
            (f"/exhibits/{exhibit.slug}/v/{version.version}/", version.version,
             " (current)" if version.version == exhibit.version else "",
             version.created_at.strftime("%Y-%m-%d %H:%M"),
             f"withdrawn: {version.withdrawn_reason}" if version.withdrawn_at else "citable")
            for version in exhibit.versions.all()[:100]))
        return format_html("<table><thead><tr><th>Version</th><th>Since</th><th>State</th></tr></thead>"
                           "<tbody>{}</tbody></table>", rows)

    @admin.display(description="Record")
    def record(self, exhibit: Exhibit) -> str:
        if not exhibit.pk:
            return "Nothing recorded yet."
        tops = [exhibit.image, *[medium.image for medium in exhibit.extra_media.select_related("image")],
                *[disk.image for disk in exhibit.disks.select_related("image")]]
        # Every layer under each disk: a derivative's record begins with its base's.
        layers = {sha for top in tops for sha in top.layers()}
        images = list(DiskImage.objects.filter(sha256__in=layers))
        return record_html(list(exhibit_record(exhibit, images=images)[:500]))

    def get_urls(self) -> list[URLPattern]:
        return [path("import-bag/", self.admin_site.admin_view(self.import_bag_view),
                     name="portal_exhibit_import_bag"), *super().get_urls()]

    @admin.action(description="Export as BagIt bags (into PORTAL_BAG_DIR)")
    def export_bags(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        agent = agent_staff(request.user.get_username())
        stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
        for exhibit in queryset.select_related("image"):
            directory = Path(settings.PORTAL_BAG_DIR) / f"{exhibit.slug}-{stamp}"
            try:
                bag_export(exhibit, directory, agent=agent)
            except BagError as error:
                messages.error(request, f"{exhibit.slug}: {error}")
                continue
            messages.success(request, f"{exhibit.slug}: exported as the bag {directory}.")

    def import_bag_view(self, request: HttpRequest) -> HttpResponse:
        """Import a bag that lies in PORTAL_BAG_DIR, as untrusted input (a draft exhibit)."""
        if not self.has_add_permission(request):
            return HttpResponse(status=403)
        root = Path(settings.PORTAL_BAG_DIR)
        bags = sorted(entry.name for entry in root.iterdir() if (entry / "bagit.txt").is_file()) \
            if root.is_dir() else []
        if request.method == "POST":
            name = request.POST.get("bag", "")
            if name not in bags:
                messages.error(request, "There is no such bag in PORTAL_BAG_DIR.")
            else:
                try:
                    imported = bag_import(root / name, agent=agent_staff(request.user.get_username()),
                                          slug=request.POST.get("slug") or None)
                except BagError as error:
                    messages.error(request, f"Refused the bag {name}: {error} Nothing was kept.")
                else:
                    messages.success(request, f"Imported {imported.exhibit.slug} from the bag {name} "
                                              "as a draft.")
                    return HttpResponseRedirect(reverse("admin:portal_exhibit_change",
                                                        args=[imported.exhibit.pk]))
        context = {**self.admin_site.each_context(request), "title": "Import an exhibit from a BagIt bag",
                   "opts": self.model._meta, "bags": bags, "bag_dir": root}
        return TemplateResponse(request, "admin/portal/exhibit/import_bag.html", context)

    def delete_model(self, request: HttpRequest, obj: Exhibit) -> None:
        exhibit_delete(obj, agent=agent_staff(request.user.get_username()))

    def save_model(self, request: HttpRequest, obj: Exhibit, form: Any, change: bool) -> None:
        super().save_model(request, obj, form, change)
        if obj.published and not obj.thumbnail and not StartState.objects.filter(exhibit=obj).exists():
            for hook in EXHIBIT_PUBLISHED_HOOKS:
                hook(obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Exhibit]) -> None:
        for exhibit in queryset:
            self.delete_model(request, exhibit)

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
            if exhibit.thumbnail_problem:
                return format_html('<strong class="thumbnail-problem">{}</strong>', exhibit.thumbnail_problem)
            return ("None yet: it is taken when the start state is prepared or the exhibit is "
                    "published, or start a preview and it is taken from the running machine.")
        how = ("chosen from a preview" if exhibit.thumbnail_chosen else
               "taken by the portal (start a preview to choose another moment)")
        return format_html('<img src="/thumbnails/{}" width="320" alt=""><br>{}', exhibit.thumbnail, how)

    @admin.display(description="Preview")
    def preview_button(self, exhibit: Exhibit) -> str:
        if not exhibit.pk:
            return "Save the exhibit first."
        return format_html(
            '<button type="submit" form="preview-form" class="button">{}</button> {}', "Start a preview",
            "Runs this exhibit as visitors would get it (drafts too) and takes its thumbnail.")


# What runs when an exhibit is saved published without a picture or a start state (the
# runtime boots it once for its thumbnail), added by `sessions.web.admin`.
EXHIBIT_PUBLISHED_HOOKS: list[Callable[[Exhibit], None]] = []

ExhibitAction = Callable[[admin.ModelAdmin, HttpRequest, "QuerySet[Exhibit]"], None]


def exhibit_actions_add(*actions: ExhibitAction) -> None:
    """The runtime's actions on exhibits (booting one to prepare its start state),
    added by `sessions.web.admin` when Django loads the admin: the catalogue offers
    them without importing the runtime."""
    ExhibitAdmin.actions = [*ExhibitAdmin.actions, *actions]


@admin.register(StartState)
class StartStateAdmin(admin.ModelAdmin):
    list_display = ("exhibit", "stale", "method", "prepare_seconds", "created_at")
    list_filter = ("stale",)
    readonly_fields = [field.name for field in StartState._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Recording)
class RecordingAdmin(admin.ModelAdmin):
    """Recorded visits: watch one, publish it as its exhibit's tour (the exhibit's
    page), delete one. A visitor's goes by itself an hour after the visit."""

    list_display = ("id", "exhibit", "started_at", "seconds", "bytes", "by_staff", "state",
                    "expires_at", "watch")
    list_filter = ("state", "by_staff", "exhibit")
    readonly_fields = [field.name for field in Recording._meta.fields]

    @admin.display(description="Watch")
    def watch(self, recording: Recording) -> str:
        return format_html('<a href="{}" target="_blank" rel="noopener">{}</a>', recording.url, "Watch")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False
