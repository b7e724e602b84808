"""Add (or update) an exhibit from a disk image on this server.

The image goes through the same checked import as `import_image` (copied,
never moved; stored as a read-only qcow2 under its SHA-256). Running it again
with the same slug updates the exhibit; the same bytes are stored once.
"""
from __future__ import annotations

from argparse import ArgumentTypeError
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from portal.images import disk_image_import
from portal.importer import QEMU_FORMATS, ImageError
from portal.models import DiskImage, Exhibit, ExhibitDisk, ExhibitMedia, extra_media_place
from portal.profile import CODE_PAGES, KEYBOARD_LAYOUTS, SOUND_CARDS, keyboard_refusal
from portal.record import agent_command

BOOT_FOR_MEDIA = {"floppy": "floppy", "disk": "hdd", "cdrom": "cdrom"}


def sound_cards(value: str) -> list[str]:
    """`--sound adlib,sb16` as a list of cards; "none" and "pcspk" add none."""
    cards = [card.strip() for card in value.split(",") if card.strip() not in {"", "none", "pcspk"}]
    unknown = [card for card in cards if card not in SOUND_CARDS]
    if unknown:
        raise ArgumentTypeError(f"unknown sound card {unknown[0]!r} (choose from "
                                f"{', '.join(sorted(SOUND_CARDS))})")
    return cards


def translations_given(titles: list[list[str]], descriptions: list[list[str]]) -> dict[str, dict[str, str]]:
    """--title-in and --description-in as an exhibit's translations."""
    translations: dict[str, dict[str, str]] = {}
    for field, given in (("title", titles), ("description", descriptions)):
        for language, text in given:
            translations.setdefault(language.strip().lower(), {})[field] = text
    return translations


def disk_given(given: list[str]) -> dict[str, Any]:
    """One --disk: IMAGE LABEL and its words (a drive, "in", "protected")."""
    if len(given) < 2:
        raise CommandError("--disk needs an image and a label: --disk IMAGE LABEL [a|b|cd] [in] [protected]")
    path, label, *words = given
    unknown = [word for word in words if word not in {"a", "b", "cd", "in", "protected"}]
    if unknown:
        raise CommandError(f"--disk {path}: unknown word {unknown[0]!r} (a, b, cd, in, protected)")
    if not Path(path).is_file():
        raise CommandError(f"{path} is not a file")
    if not label.strip() or len(label) > 80:
        raise CommandError(f"--disk {path}: the label must be 1 to 80 characters")
    drives = [word for word in words if word in {"a", "b", "cd"}]
    return {"path": Path(path), "label": label.strip(), "drive": drives[-1] if drives else None,
            "in": "in" in words, "protected": "protected" in words}


class Command(BaseCommand):
    help = "Add or update an exhibit from a disk image (raw, qcow2, VMDK, VDI, VHD, VHDX, ISO)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("image", type=Path, help="Path of a disk image on this server.")
        parser.add_argument("--format", choices=sorted(QEMU_FORMATS),
                            help="The image's format; default: from its name.")
        parser.add_argument("--slug", required=True)
        parser.add_argument("--title", required=True)
        parser.add_argument("--boot", choices=[c.value for c in Exhibit.Boot],
                            help="Default: floppy for floppy-sized images, cdrom for ISOs, else hdd.")
        parser.add_argument("--vga", choices=[c.value for c in Exhibit.Vga], default="std")
        parser.add_argument("--mouse", choices=[c.value for c in Exhibit.Mouse], default="vmport")
        parser.add_argument(
            "--sound", type=sound_cards, default=[], metavar="CARDS",
            help="Sound cards besides the PC speaker (which every exhibit has), comma-separated: "
                 "adlib, sb16 (for example adlib,sb16); none for the speaker alone.",
        )
        parser.add_argument("--source", default="", help="Provenance: where the image comes from.")
        parser.add_argument("--donor", default="")
        parser.add_argument("--acquired", help="Provenance: date acquired, YYYY-MM-DD.")
        parser.add_argument("--notes", default="", help="Provenance notes.")
        parser.add_argument("--extra", type=Path, action="append", default=[], metavar="IMAGE",
                            help="A further medium (second floppy, CD-ROM, second hard disk), "
                                 "imported like the boot image; repeat for more. A floppy or CD "
                                 "joins the disk set, in its drive at start.")
        parser.add_argument(
            "--disk", nargs="+", action="append", default=[], metavar="IMAGE LABEL [a|b|cd] [in] [protected]",
            help="A disk of the exhibit's disk set (repeat, in order): its image, its label, the "
                 "drive it belongs in (default b for a floppy, cd for a CD), 'in' to have it in its "
                 "drive at start, 'protected' to write-protect it. "
                 "Example: --disk disk2.img 'Disk 2 — Data' b",
        )
        parser.add_argument("--year", type=int)
        parser.add_argument("--publisher", default="")
        parser.add_argument("--platform", choices=[c.value for c in Exhibit.Platform], default="dos",
                            help="What the visitor gets: dos, windows3 or other (the gallery's filter).")
        parser.add_argument("--kind", choices=[c.value for c in Exhibit.Kind], default="software",
                            help="software or game: what search engines are told it is.")
        parser.add_argument("--rights", default="", help="The licence or rights statement.")
        parser.add_argument("--description", default="")
        parser.add_argument("--language", default="en",
                            help="The language the title and description are written in (en, de, …).")
        parser.add_argument("--title-in", nargs=2, action="append", default=[], metavar=("LANGUAGE", "TITLE"),
                            help="The title in another language (repeat for more): --title-in de 'Titel'.")
        parser.add_argument("--description-in", nargs=2, action="append", default=[],
                            metavar=("LANGUAGE", "TEXT"), help="The description in another language.")
        parser.add_argument("--memory-mb", type=int, default=16)
        parser.add_argument("--cpu", choices=[c.value for c in Exhibit.Cpu], default="486")
        parser.add_argument(
            "--accelerator", choices=[c.value for c in Exhibit.Accelerator], default="auto",
            help="auto: KVM where available; tcg: always software emulation.",
        )
        parser.add_argument(
            "--speed", choices=[c.value for c in Exhibit.Speed], default="host",
            help="host: as fast as the host runs it; or a period CPU's speed (software emulation).",
        )
        parser.add_argument(
            "--files-in", choices=[c.value for c in Exhibit.FilesIn], default="auto",
            help="The floppy drive visitors' own files go into (auto: the first free one), or off.",
        )
        parser.add_argument(
            "--code-page", type=int, choices=sorted(CODE_PAGES), default=437, metavar="N",
            help="The DOS code page the guest's text screen is read in: "
                 + ", ".join(str(number) for number in sorted(CODE_PAGES)) + " (default 437).",
        )
        parser.add_argument(
            "--keyboard", default="us", metavar="LAYOUT",
            help=f"The guest's keyboard layout: {', '.join(KEYBOARD_LAYOUTS)} (default us).",
        )
        parser.add_argument(
            "--printer", default="text", choices=[str(value) for value in Exhibit.Printer.values],
            help="The printer the guest was set up for on LPT1 (default text: Epson ESC/P).",
        )
        parser.add_argument(
            "--paper", default="", choices=["", "a4", "letter"],
            help="The paper text prints are laid out on (default: the server's, PORTAL_PRINT_PAPER).",
        )
        parser.add_argument("--publish", action="store_true", help="Make it visible to visitors.")
        parser.add_argument("--visitors-may-record", action="store_true",
                            help="Let visitors record their own visits (curators always may).")

    def handle(self, *args: Any, **options: Any) -> None:
        source: Path = options["image"]
        refusal = keyboard_refusal(options["keyboard"])
        if refusal is not None:
            raise CommandError(refusal)
        if not source.is_file():
            raise CommandError(f"{source} is not a file")
        extras: list[DiskImage] = []
        disks = [disk_given(given) for given in options["disk"]]
        try:
            agent = agent_command("add_exhibit")
            image: DiskImage = disk_image_import(source, name=source.name, claim=options["format"],
                                                 agent=agent)
            for extra in options["extra"]:
                extras.append(disk_image_import(extra, name=extra.name, agent=agent))
            disk_images = [disk_image_import(disk["path"], name=disk["path"].name, agent=agent)
                           for disk in disks]
        except ImageError as error:
            raise CommandError(f"refused an image: {error}") from error
        with transaction.atomic():
            exhibit, created = Exhibit.objects.update_or_create(
                slug=options["slug"],
                defaults={
                    "title": options["title"],
                    "year": options["year"],
                    "publisher": options["publisher"],
                    "platform": options["platform"],
                    "kind": options["kind"],
                    "rights": options["rights"],
                    "description": options["description"],
                    "language": options["language"],
                    "translations": translations_given(options["title_in"], options["description_in"]),
                    "image": image,
                    "boot": options["boot"] or BOOT_FOR_MEDIA[image.media],
                    "cpu": options["cpu"],
                    "memory_mb": options["memory_mb"],
                    "vga": options["vga"],
                    "mouse": options["mouse"],
                    "sound_adlib": "adlib" in options["sound"],
                    "sound_sb16": "sb16" in options["sound"],
                    "accelerator": options["accelerator"],
                    "speed": options["speed"],
                    "files_in": options["files_in"],
                    "code_page": options["code_page"],
                    "keyboard": options["keyboard"],
                    "printer": options["printer"],
                    "paper": options["paper"],
                    "provenance_source": options["source"],
                    "provenance_donor": options["donor"],
                    "provenance_acquired": options["acquired"],
                    "provenance_notes": options["notes"],
                    "published": options["publish"],
                    "visitors_may_record": options["visitors_may_record"],
                },
            )
            ExhibitMedia.objects.filter(exhibit=exhibit).delete()
            ExhibitDisk.objects.filter(exhibit=exhibit).delete()
            for position, (disk, disk_image) in enumerate(zip(disks, disk_images, strict=True)):
                drive = disk["drive"] or ("cd" if disk_image.media == DiskImage.Media.CDROM else "b")
                made = ExhibitDisk(exhibit=exhibit, image=disk_image, position=position, label=disk["label"],
                                   drive=drive, in_drive_at_start=disk["in"],
                                   write_protected=disk["protected"])
                refusal = made.refusal()
                if refusal is not None:
                    raise CommandError(f"{disk['path']}: {refusal}")
                made.save()
            if len({d.drive for d in ExhibitDisk.objects.filter(exhibit=exhibit, in_drive_at_start=True)}) \
                    != ExhibitDisk.objects.filter(exhibit=exhibit, in_drive_at_start=True).count():
                raise CommandError("only one disk can be in each drive at start")
            extra_media_place(exhibit, extras)
            exhibit.refresh_from_db()
            try:
                exhibit.machine_profile()
            except ValueError as error:
                raise CommandError(f"these media do not fit the PC: {error}") from error
        action = "Added" if created else "Updated"
        state = "published" if exhibit.published else "draft"
        self.stdout.write(f"{action} exhibit {exhibit.slug} ({state}), master sha256 {image.sha256}")
