"""The catalogue: masters (read-only base images) and the exhibits built on them.

Owns what curators publish. Knows nothing about processes; the machine profile
it hands out is a plain value that the runtime turns into a QEMU command line.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone, translation
from django.utils.translation import gettext_lazy, gettext_noop

from .profile import (
    CODE_PAGES,
    DISK_DRIVE_MEDIA,
    DISK_DRIVES,
    KEYBOARD_LAYOUTS,
    MachineProfile,
    sound_devices,
)

# What the exhibit page calls each piece of sound hardware.
SOUND_NAMES = {"pcspk": gettext_lazy("PC speaker"), "adlib": "AdLib", "sb16": "Sound Blaster 16"}


class DiskImage(models.Model):
    """A preservation master: stored read-only under its SHA-256, never written.

    `sha256` is the stored file's digest and its content address (what fixity
    re-checks); `source_sha256` is the file as the curator brought it and
    `guest_sha256` the disk as the guest sees it.
    """

    class Media(models.TextChoices):
        FLOPPY = "floppy", "Floppy disk"
        DISK = "disk", "Hard disk"
        CDROM = "cdrom", "CD-ROM"

    class Fixity(models.TextChoices):
        UNCHECKED = "unchecked", "Not checked yet"
        OK = "ok", "Intact"
        FAILED = "failed", "FAILED"

    sha256 = models.CharField(max_length=64, unique=True)
    path = models.CharField(max_length=1024, help_text="Absolute path of the stored master.")
    format = models.CharField(max_length=16, default="raw", help_text="Format of the stored master.")
    size_bytes = models.BigIntegerField(help_text="Size of the stored master file.")
    original_name = models.CharField(max_length=255, blank=True)
    source_format = models.CharField(max_length=16, blank=True,
                                     help_text="Format of the file the curator brought.")
    source_sha256 = models.CharField(max_length=64, blank=True)
    source_size_bytes = models.BigIntegerField(null=True, blank=True)
    guest_sha256 = models.CharField(max_length=64, blank=True,
                                    help_text="SHA-256 of the disk's contents as the guest sees them.")
    virtual_size_bytes = models.BigIntegerField(null=True, blank=True)
    media = models.CharField(max_length=8, choices=Media.choices, default=Media.DISK)
    fixity = models.CharField(max_length=9, choices=Fixity.choices, default=Fixity.UNCHECKED)
    fixity_checked_at = models.DateTimeField(null=True, blank=True)
    # A derivative's backing layer (its file names the parent's by content address,
    # "<sha256>.qcow2", in the same store): the guest sees the parent's disk with
    # this layer's clusters on top. Protected: a master others build on stays.
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="children")
    # Every layer's SHA-256 from the base up to this one, joined by "+" (empty for
    # a master with no parent): what fixity, start states and bags go by.
    chain = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.original_name or 'image'} ({self.sha256[:12]})"

    def layers(self) -> list[str]:
        """The content addresses of the disk's layers, base first, this one last."""
        return self.chain.split("+") if self.chain else [self.sha256]


class PreservationEvent(models.Model):
    """One row of the fixity and provenance record: something that happened to a
    master or an exhibit that matters to its integrity.

    Event types are the PREMIS vocabulary's names (id.loc.gov/vocabulary/preservation/
    eventType). The row outlives what it is about: a deleted master or exhibit keeps its
    record (the foreign key is emptied, the SHA-256 and slug stay).
    """

    class Type(models.TextChoices):
        INGESTION = "ingestion", "ingestion"
        FIXITY_CHECK = "fixity check", "fixity check"
        # A derivative master made from a visit's disk over its parent.
        CREATION = "creation", "creation (derivation)"
        # An exported bag: bit-identical copies of the masters and the record.
        REPLICATION = "replication", "replication (export)"
        # A bag's manifests checked before its contents are imported.
        VALIDATION = "validation", "validation"
        DELETION = "deletion", "deletion"

    class Outcome(models.TextChoices):
        SUCCESS = "success", "success"
        FAILURE = "failure", "FAILURE"

    event_type = models.CharField(max_length=32, choices=Type.choices)
    at = models.DateTimeField(default=timezone.now, db_index=True)
    # Who did it: "command import_image", "staff user alice", "portal".
    agent = models.CharField(max_length=200)
    outcome = models.CharField(max_length=8, choices=Outcome.choices, default=Outcome.SUCCESS)
    algorithm = models.CharField(max_length=16, blank=True, help_text="Digest algorithm, e.g. SHA-256.")
    digest = models.CharField(max_length=128, blank=True)
    detail = models.TextField(blank=True)
    image = models.ForeignKey(DiskImage, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="events")
    image_sha256 = models.CharField(max_length=64, blank=True, db_index=True,
                                    help_text="The master's content address (kept after it is deleted).")
    exhibit = models.ForeignKey("Exhibit", null=True, blank=True, on_delete=models.SET_NULL,
                                related_name="events")
    exhibit_slug = models.CharField(max_length=50, blank=True)
    # Another master the event names: a derivative's parent.
    related_sha256 = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-at", "-pk"]

    def __str__(self) -> str:
        about = self.image_sha256[:12] or self.exhibit_slug
        return f"{self.event_type} {self.outcome} {about} at {self.at:%Y-%m-%d %H:%M}"


# The guest keyboard layouts' names as visitors read them, in KEYBOARD_LAYOUTS' order.
KEYBOARD_LABELS = {
    "us": gettext_lazy("US English (QWERTY)"),
    "uk": gettext_lazy("UK English (QWERTY)"),
    "de": gettext_lazy("German (QWERTZ)"),
    "fr": gettext_lazy("French (AZERTY)"),
    "es": gettext_lazy("Spanish (QWERTY)"),
    "it": gettext_lazy("Italian (QWERTY)"),
    "ch-de": gettext_lazy("Swiss German (QWERTZ)"),
    "be": gettext_lazy("Belgian (AZERTY)"),
    "nl": gettext_lazy("Dutch (QWERTY)"),
    "se": gettext_lazy("Swedish and Finnish (QWERTY)"),
    "no": gettext_lazy("Norwegian (QWERTY)"),
    "dk": gettext_lazy("Danish (QWERTY)"),
    "pt": gettext_lazy("Portuguese (QWERTY)"),
}
assert list(KEYBOARD_LABELS) == list(KEYBOARD_LAYOUTS)


class Exhibit(models.Model):
    class Boot(models.TextChoices):
        FLOPPY = "floppy", "Floppy disk"
        HDD = "hdd", "Hard disk"
        CDROM = "cdrom", "CD-ROM"

    class Cpu(models.TextChoices):
        I486 = "486", "486"
        PENTIUM = "pentium", "Pentium"

    class Accelerator(models.TextChoices):
        AUTO = "auto", "KVM where available, else software emulation"
        TCG = "tcg", "Always software emulation (TCG)"

    class Mouse(models.TextChoices):
        VMPORT = "vmport", "Absolute pointer (VMware mouse interface), PS/2 fallback"
        PS2 = "ps2", "PS/2 mouse only"

    class Vga(models.TextChoices):
        STD = "std", "Standard VGA"
        CIRRUS = "cirrus", "Cirrus Logic GD5446"

    class Speed(models.TextChoices):
        HOST = "host", "As fast as the host runs it"
        I386SX16 = "386sx16", "386SX-16"
        I486DX33 = "486dx33", "486DX-33"
        I486DX266 = "486dx2-66", "486DX2-66"
        PENTIUM60 = "pentium60", "Pentium-60"

    class FilesIn(models.TextChoices):
        AUTO = "auto", "The first free floppy drive (A: or B:)"
        A = "a", "Drive A: (changes the disk in it)"
        B = "b", "Drive B: (changes the disk in it)"
        OFF = "off", "Off: visitors cannot bring files"

    class Printer(models.TextChoices):
        TEXT = "text", "Text or Epson-compatible dot matrix (ESC/P)"
        POSTSCRIPT = "postscript", "PostScript"
        PCL = "pcl", "HP LaserJet (PCL)"

    class Paper(models.TextChoices):
        DEFAULT = "", "The server's default (PORTAL_PRINT_PAPER)"
        A4 = "a4", "A4"
        LETTER = "letter", "US Letter"

    class Platform(models.TextChoices):
        DOS = "dos", gettext_lazy("DOS")
        WINDOWS3 = "windows3", gettext_lazy("Windows 3.x")
        OTHER = "other", gettext_lazy("Other")

    class Kind(models.TextChoices):
        SOFTWARE = "software", "Software (SoftwareApplication)"
        GAME = "game", "A game (VideoGame)"

    slug = models.SlugField(unique=True)
    title = models.CharField(max_length=200)
    year = models.PositiveSmallIntegerField(null=True, blank=True)
    publisher = models.CharField(max_length=200, blank=True)
    description = models.TextField(blank=True)
    # The language the title and description are written in, and the same two in
    # more languages ({"de": {"title": …, "description": …}}): a visitor reads the
    # one in their language where the curators gave it, the original otherwise.
    language = models.CharField(
        max_length=16, default="en",
        help_text="The language the title and description above are written in (a code such as "
                  "en, de, fr, es).")
    translations = models.JSONField(
        default=dict, blank=True,
        help_text="The title and description in more languages, by language code.")
    image = models.ForeignKey(DiskImage, on_delete=models.PROTECT, related_name="exhibits")
    boot = models.CharField(max_length=8, choices=Boot.choices, default=Boot.FLOPPY)
    cpu = models.CharField(max_length=8, choices=Cpu.choices, default=Cpu.I486)
    memory_mb = models.PositiveSmallIntegerField(default=16)
    vga = models.CharField(max_length=8, choices=Vga.choices, default=Vga.STD)
    mouse = models.CharField(max_length=8, choices=Mouse.choices, default=Mouse.VMPORT)
    # Every exhibit has a PC speaker; these cards are the curator's choice.
    sound_adlib = models.BooleanField(
        "AdLib", default=False,
        help_text="An AdLib card (Yamaha OPL2 FM synthesis, port 388h): the music of "
                  "most DOS games from 1988 on.")
    sound_sb16 = models.BooleanField(
        "Sound Blaster 16", default=False,
        help_text="A Sound Blaster 16 (port 220h, IRQ 5, DMA 1 and 5): digitised sound "
                  "and speech. The PC speaker is always there.")
    accelerator = models.CharField(
        max_length=8, choices=Accelerator.choices, default=Accelerator.AUTO,
        help_text="Software emulation suits guests that need exact legacy timing "
                  "(floppy boot fails under KVM on nested-virtualisation hosts).",
    )
    speed = models.CharField(
        max_length=10, choices=Speed.choices, default=Speed.HOST,
        help_text="A period CPU's speed, for software that breaks on a fast PC; it always runs "
                  "in software emulation.",
    )
    files_in = models.CharField(
        max_length=4, choices=FilesIn.choices, default=FilesIn.AUTO, verbose_name="visitors' files",
        help_text="The floppy drive a visitor's own files go into, on a disk built for them.",
    )
    code_page = models.PositiveSmallIntegerField(
        choices=sorted(CODE_PAGES.items()), default=437,
        help_text="The DOS code page the guest's text screen is read in (Screen as text, "
                  "screen.txt): 437 for most DOS software, 850 for Western European "
                  "installs, or the page the guest's COUNTRY and CHCP set.",
    )
    keyboard = models.CharField(
        max_length=8, default="us",
        # The guest's layouts by the names the API uses (portal.profile).
        choices=list(KEYBOARD_LABELS.items()),
        error_messages={"invalid_choice": "There is no keyboard layout called %(value)r; these are "
                                          f"known: {', '.join(KEYBOARD_LAYOUTS)}."},
        help_text="The keyboard layout the guest was set up with (its DOS KEYB or Windows 3.1 "
                  "setting): what a visitor types arrives as the keys that type it on this layout.",
    )
    printer = models.CharField(
        max_length=12, choices=Printer.choices, default=Printer.TEXT,
        help_text="The printer the guest's software was set up for on LPT1. What it prints "
                  "reaches the visitor as a PDF: text in the exhibit's code page, PostScript "
                  "through Ghostscript, PCL as its text (with the raw job beside it).",
    )
    paper = models.CharField(
        max_length=8, choices=Paper.choices, default=Paper.DEFAULT, blank=True,
        help_text="The paper text prints are laid out on (PostScript says its own).",
    )
    provenance_source = models.CharField(max_length=300, blank=True,
                                         help_text="Where the image comes from (archive, collection).")
    provenance_donor = models.CharField(max_length=200, blank=True)
    provenance_acquired = models.DateField(null=True, blank=True, verbose_name="date acquired")
    provenance_notes = models.TextField(blank=True)
    thumbnail = models.CharField(max_length=80, blank=True,
                                 help_text="File name of the thumbnail (its SHA-256), taken from a preview.")
    # The same picture at the gallery's size (320 pixels wide), by its own SHA-256.
    thumbnail_small = models.CharField(max_length=80, blank=True, editable=False)
    # True when a curator chose the moment (from a preview): a new start state keeps it.
    thumbnail_chosen = models.BooleanField(default=False, editable=False)
    # Why the last try to take a thumbnail left the exhibit without one (shown in the admin).
    thumbnail_problem = models.TextField(blank=True, editable=False)
    platform = models.CharField(
        max_length=10, choices=Platform.choices, default=Platform.DOS, db_index=True,
        help_text="What the visitor gets: a DOS PC, Windows 3.x, or something else (the gallery's filter).")
    kind = models.CharField(
        max_length=10, choices=Kind.choices, default=Kind.SOFTWARE, verbose_name="kind of software",
        help_text="What search engines are told this is (schema.org SoftwareApplication or VideoGame).")
    rights = models.TextField(
        blank=True, verbose_name="licence or rights statement",
        help_text="Who holds the rights and on what terms visitors may use it (a licence's name or "
                  "URL, or a rights statement such as rightsstatements.org's); on the page and in its "
                  "citation data.")
    # The short id of the current configuration (portal.versions), kept in step with it.
    version = models.CharField(max_length=12, blank=True, editable=False)
    # The kinds of the exhibit's extra media in order ("floppy,cdrom"), kept in step
    # with its ExhibitMedia rows so the machine profile is known without a query.
    extra_media_kinds = models.CharField(max_length=100, blank=True, editable=False)
    # The drives the exhibit's disk set uses ("b,cd"), kept in step with its
    # ExhibitDisk rows for the same reason.
    disk_drives = models.CharField(max_length=20, blank=True, editable=False)
    published = models.BooleanField(default=False, help_text="Drafts are invisible to visitors.")
    visitors_may_record = models.BooleanField(
        default=False, help_text="Visitors may record their own visits (curators always may).")
    # A kept recording shown on the exhibit's page and to visitors waiting in line.
    tour = models.ForeignKey("Recording", null=True, blank=True, on_delete=models.SET_NULL,
                             related_name="tour_of",
                             help_text="A kept recording shown as the exhibit's tour.")
    # The exhibit this one was derived from (saved from a preview of it).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL,
                               related_name="derivatives", help_text="The exhibit this one was derived from.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Set on an unsaved copy that carries a cited earlier version's configuration
    # (portal.versions.exhibit_as_version): it boots cold, never from the current start state.
    cited_version: str | None = None

    class Meta:
        ordering = ["title"]
        # The gallery's sorts and filters, over published exhibits.
        indexes = [
            models.Index(fields=["published", "title"], name="exhibit_gallery_title"),
            models.Index(fields=["published", "year", "title"], name="exhibit_gallery_year"),
            models.Index(fields=["published", "-created_at"], name="exhibit_gallery_newest"),
        ]

    def __str__(self) -> str:
        return self.title

    def _translated(self, field: str) -> tuple[str, str] | None:
        language = (translation.get_language() or settings.LANGUAGE_CODE).split("-")[0]
        given = self.translations.get(language) if isinstance(self.translations, dict) else None
        text = given.get(field) if isinstance(given, dict) else None
        return (text, language) if isinstance(text, str) and text.strip() else None

    @property
    def shown_title(self) -> str:
        """The title in the active language where the curators gave it, else the original."""
        found = self._translated("title")
        return found[0] if found else self.title

    @property
    def shown_description(self) -> str:
        """The description in the active language where given, else the original."""
        found = self._translated("description")
        return found[0] if found else self.description

    @property
    def shown_title_language(self) -> str:
        """The language the shown title is in (the page marks it when it is not the page's)."""
        found = self._translated("title")
        return found[1] if found else self.language

    @property
    def shown_description_language(self) -> str:
        found = self._translated("description")
        return found[1] if found else self.language

    def machine_profile(self) -> MachineProfile:
        extra_media = tuple(filter(None, self.extra_media_kinds.split(",")))
        return MachineProfile(cpu=self.cpu, memory_mb=self.memory_mb, vga=self.vga, boot=self.boot,
                              accelerator=self.accelerator, mouse=self.mouse,
                              sound=sound_devices(self.sound_cards()),
                              extra_media=extra_media, speed=self.speed,
                              files_in=self._files_in_drive(extra_media),
                              disk_drives=tuple(filter(None, self.disk_drives.split(","))))

    def _files_in_drive(self, extra_media: tuple[str, ...]) -> str:
        """The drive visitors' files go into: "auto" takes the first free floppy drive."""
        if self.files_in != self.FilesIn.AUTO:
            return str(self.files_in)
        floppies = (self.boot == self.Boot.FLOPPY) + extra_media.count("floppy")
        return "ab"[floppies] if floppies < 2 else "off"

    def sound_cards(self) -> list[str]:
        """The sound cards the curator chose ("adlib", "sb16"); the PC speaker is implied."""
        return [card for card, chosen in (("adlib", self.sound_adlib), ("sb16", self.sound_sb16))
                if chosen]

    def sound_names(self) -> list[str]:
        """The exhibit's sound hardware as a visitor reads it (in the active language)."""
        return [str(SOUND_NAMES[device]) for device in self.machine_profile().sound]

    async def fixity_problem(self) -> str | None:
        """Why this exhibit must not start (a master failed its fixity check), or None."""
        images = [self.image_id, *[pk async for pk in ExhibitMedia.objects.filter(exhibit_id=self.pk)
                                   .values_list("image_id", flat=True)],
                  *[pk async for pk in ExhibitDisk.objects.filter(exhibit_id=self.pk)
                    .values_list("image_id", flat=True)]]
        # Every layer under each disk counts: a failed layer fails what is built on it.
        layers = [sha for chain in [value async for value in DiskImage.objects.filter(pk__in=images)
                                    .values_list("chain", flat=True)] if chain
                  for sha in chain.split("+")]
        failed = await DiskImage.objects.filter(
            models.Q(pk__in=images) | models.Q(sha256__in=layers), fixity=DiskImage.Fixity.FAILED).aexists()
        if failed:
            return gettext_noop("This exhibit cannot be started: its disk image failed an integrity "
                                "check. The curators have been told.")
        return None



class ExhibitMedia(models.Model):
    """A further medium in an exhibit's machine: a second floppy, a CD-ROM, a second hard disk.

    Each is attached through its own throwaway overlay, like the boot disk; its
    kind is the image's media.
    """

    exhibit = models.ForeignKey(Exhibit, on_delete=models.CASCADE, related_name="extra_media")
    image = models.ForeignKey(DiskImage, on_delete=models.PROTECT, related_name="extra_in")
    position = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["position", "pk"]
        verbose_name = "extra medium"
        verbose_name_plural = "extra media"

    def __str__(self) -> str:
        return f"{self.image} in {self.exhibit_id}"


def extra_media_kinds_refresh(exhibit_id: int) -> None:
    """Keep Exhibit.extra_media_kinds in step with the exhibit's ExhibitMedia rows."""
    kinds = ExhibitMedia.objects.filter(exhibit_id=exhibit_id).order_by("position", "pk") \
        .values_list("image__media", flat=True)
    Exhibit.objects.filter(pk=exhibit_id).update(extra_media_kinds=",".join(kinds))


@receiver([post_save, post_delete], sender=ExhibitMedia)
def _extra_media_changed(sender: type[ExhibitMedia], instance: ExhibitMedia, **kwargs: Any) -> None:
    extra_media_kinds_refresh(instance.exhibit_id)
    _version_refresh(instance.exhibit_id)


def _version_refresh(exhibit_id: int) -> None:
    from .versions import version_record
    if Exhibit.objects.filter(pk=exhibit_id).exists():  # not while the exhibit itself is deleted
        version_record(exhibit_id)


class ExhibitDisk(models.Model):
    """One disk of an exhibit's disk set: software that came on several floppies or a
    CD, which a visitor changes in the machine's drives while it runs (the disk box).

    Each is a checked master like the boot disk; a visit writes to a throwaway layer
    of its own over it, made when it first goes in, and a write-protected disk is
    put in read-only (the guest gets "write protected", as with the tab).
    """

    class Drive(models.TextChoices):
        A = "a", "A:"
        B = "b", "B:"
        CD = "cd", "The CD drive"

    exhibit = models.ForeignKey(Exhibit, on_delete=models.CASCADE, related_name="disks")
    image = models.ForeignKey(DiskImage, on_delete=models.PROTECT, related_name="in_disk_sets")
    position = models.PositiveSmallIntegerField(default=0)
    label = models.CharField(max_length=80, help_text='What visitors read, such as "Disk 2 — Data".')
    drive = models.CharField(max_length=2, choices=Drive.choices, default=Drive.B,
                             help_text="The drive this disk belongs in.")
    in_drive_at_start = models.BooleanField(
        default=False, help_text="In its drive when a visit begins (one disk per drive).")
    write_protected = models.BooleanField(
        default=False, help_text="The guest may read the disk but gets \"write protected\" when it writes.")

    class Meta:
        ordering = ["position", "pk"]
        verbose_name = "disk of the disk set"
        verbose_name_plural = "disk set"

    def __str__(self) -> str:
        return self.label

    @property
    def media(self) -> str:
        """"floppy" or "cdrom": what the drive takes."""
        return DISK_DRIVE_MEDIA[self.drive]

    def refusal(self) -> str | None:
        """Why this disk cannot be in its drive (a sentence for curators), or None."""
        kind = self.image.media if self.image_id else None
        if kind == DiskImage.Media.DISK:
            return "A hard disk image cannot be put into a drive of the disk box."
        if kind is not None and kind != self.media:
            kinds = {"floppy": "a floppy disk", "cdrom": "a CD-ROM"}
            drive = "the CD drive" if self.drive == self.Drive.CD else f"drive {self.drive.upper()}:"
            return f"This image is {kinds[kind]}; {drive} takes {kinds[self.media]}."
        return None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.pk, "label": self.label, "media": self.media, "drive": self.drive,
                "write_protected": self.write_protected}


# What a disk of a set is besides its exhibit and master: what derivatives and bags carry.
DISK_FIELDS = ("position", "label", "drive", "in_drive_at_start", "write_protected")


def disk_drives_refresh(exhibit_id: int) -> None:
    """Keep Exhibit.disk_drives in step with the exhibit's ExhibitDisk rows."""
    used = set(ExhibitDisk.objects.filter(exhibit_id=exhibit_id).values_list("drive", flat=True))
    Exhibit.objects.filter(pk=exhibit_id).update(
        disk_drives=",".join(drive for drive in DISK_DRIVES if drive in used))


def extra_media_place(exhibit: Exhibit, images: list[DiskImage]) -> None:
    """Give the exhibit these further media, in order: hard disks as extra media, floppies
    and CD-ROMs as disks of its disk set, each in the drive a PC gives it (the first
    free floppy drive, the CD drive), in it at start where the drive is free."""
    taken = {"a"} if exhibit.boot == Exhibit.Boot.FLOPPY else set()
    if exhibit.boot == Exhibit.Boot.CDROM:
        taken.add("cd")
    counts = {"floppy": 0, "cdrom": 0}
    start = ExhibitDisk.objects.filter(exhibit=exhibit).count()
    for position, image in enumerate(images):
        if image.media == DiskImage.Media.DISK:
            ExhibitMedia.objects.create(exhibit=exhibit, image=image, position=position)
            continue
        counts[image.media] += 1
        if image.media == DiskImage.Media.FLOPPY:
            drive = next((letter for letter in ("a", "b") if letter not in taken), "b")
            label = f"Floppy disk {counts['floppy']}"
        else:
            drive = "cd"
            label = "CD-ROM" if counts["cdrom"] == 1 else f"CD-ROM {counts['cdrom']}"
        ExhibitDisk.objects.create(exhibit=exhibit, image=image, position=start + position, label=label,
                                   drive=drive, in_drive_at_start=drive not in taken)
        taken.add(drive)


@receiver([post_save, post_delete], sender=ExhibitDisk)
def _disk_set_changed(sender: type[ExhibitDisk], instance: ExhibitDisk, **kwargs: Any) -> None:
    disk_drives_refresh(instance.exhibit_id)
    _version_refresh(instance.exhibit_id)


class StartState(models.Model):
    """An exhibit's prepared start: a booted machine, frozen, for instant starts.

    Two read-only files: the warm layer (a qcow2 over the master holding what
    booting wrote) and the machine state QEMU saved. Visitors' overlays sit on
    the warm layer and QEMU resumes from the state. `key` says what the state
    depends on; when the portal's key for the exhibit differs, the state is
    stale and visitors get a cold boot.
    """

    exhibit = models.OneToOneField(Exhibit, on_delete=models.CASCADE, related_name="start_state")
    warm_path = models.CharField(max_length=1024)
    warm_sha256 = models.CharField(max_length=64)
    state_path = models.CharField(max_length=1024)
    state_sha256 = models.CharField(max_length=64)
    key = models.TextField()
    method = models.CharField(max_length=255, help_text="How the start state was reached.")
    prepare_seconds = models.FloatField()
    stale = models.BooleanField(default=False)
    stale_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"start state of {self.exhibit_id}{' (stale)' if self.stale else ''}"


# A recording's files in the recording store: the recording, its sound track, its video.
RECORDING_SUFFIXES = (".rec", ".ogg", ".webm")


class Recording(models.Model):
    """A recorded visit: its file lives in the recording store (PORTAL_RECORDING_DIR),
    which every node serves; the row says whose it is and how long it is kept.

    The id is the maker's link: long and random, the only way to reach it."""

    class State(models.TextChoices):
        # Curators' words (the admin's): not in the visitors' catalogue.
        RECORDING = "recording", "recording"
        KEPT = "kept", "kept"
        DAMAGED = "damaged", "damaged"

    class Export(models.TextChoices):
        NONE = "", "not asked for"
        RUNNING = "running", "being made"
        DONE = "done", "ready"
        FAILED = "failed", "failed"

    id = models.CharField(primary_key=True, max_length=40)
    exhibit = models.ForeignKey(Exhibit, on_delete=models.CASCADE, related_name="recordings")
    session_id = models.CharField(max_length=40, db_index=True)
    # The visitor id of the browser that made it (portal.visitor), and whether a curator did.
    owner = models.CharField(max_length=64, blank=True)
    by_staff = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=State.choices, default=State.RECORDING)
    # Why it stopped by itself ("size", "length"), or "" when its maker or the visit's end stopped it.
    stopped_reason = models.CharField(max_length=10, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    seconds = models.FloatField(default=0.0)
    bytes = models.BigIntegerField(default=0)
    sound = models.BooleanField(default=False)
    # When a visitor's recording is deleted (an hour after their visit); never for a curator's.
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    export_state = models.CharField(max_length=8, choices=Export.choices, default=Export.NONE, blank=True)
    export_progress = models.FloatField(default=0.0)
    export_detail = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-started_at"]

    def __str__(self) -> str:
        return f"recording {self.id[:8]} of {self.exhibit_id}"

    @property
    def url(self) -> str:
        return f"/recordings/{self.id}/"


@receiver(post_delete, sender=Recording)
def _recording_deleted(sender: type[Recording], instance: Recording, **kwargs: Any) -> None:
    """A recording's files go with its row (the admin's delete, an expiry)."""
    for suffix in RECORDING_SUFFIXES:
        (settings.PORTAL_RECORDING_DIR / f"{instance.id}{suffix}").unlink(missing_ok=True)


class ExhibitVersion(models.Model):
    """One configuration an exhibit has had, by its short id (portal.versions): what a
    citation names. Written when the configuration changes and never changed after,
    except that it is withdrawn when a master it uses is deleted."""

    exhibit = models.ForeignKey(Exhibit, on_delete=models.CASCADE, related_name="versions")
    version = models.CharField(max_length=12)
    configuration = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now)
    withdrawn_at = models.DateTimeField(null=True, blank=True)
    withdrawn_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [models.UniqueConstraint(fields=["exhibit", "version"], name="exhibit_version_unique")]

    def __str__(self) -> str:
        return f"{self.exhibit_id} v{self.version}"

    def masters(self) -> list[str]:
        """The SHA-256 of every master (and layer) this configuration uses."""
        found = self.configuration.get("masters", {}) if isinstance(self.configuration, dict) else {}
        return [sha for group in found.values() for sha in group if isinstance(sha, str)]


@receiver(post_save, sender=Exhibit)
def _exhibit_saved(sender: type[Exhibit], instance: Exhibit, raw: bool = False, **kwargs: Any) -> None:
    if not raw:
        from .versions import version_record
        version_record(instance.pk)
