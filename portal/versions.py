"""Citable versions of exhibits: what an exhibit's configuration is, its short id, and
how a citation names it.

Owns: the configuration as a plain value (its masters' and disk set's SHA-256, the
machine profile that builds its command line, speed, keyboard, sound and the other
choices a visitor's machine is made from), its version id (the first 12 hex digits
of the SHA-256 of its canonical JSON), recording each configuration once, an
exhibit as a cited version had it, what changed since, and the citation formats.

Must not: start machines (the runtime starts an exhibit this module hands it).
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from datetime import date
from typing import Any

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext, gettext_lazy

from .models import DiskImage, Exhibit, ExhibitDisk, ExhibitMedia, ExhibitVersion

# The exhibit's own fields a visitor's machine is made from (restored for a cited version).
MACHINE_FIELDS = ("boot", "cpu", "memory_mb", "vga", "mouse", "accelerator", "speed", "files_in",
                  "sound_adlib", "sound_sb16", "keyboard", "code_page", "printer",
                  "extra_media_kinds", "disk_drives")
VERSION_LENGTH = 12

# What a visitor reads for each part of a configuration that changed.
PART_NAMES = {
    "boot_disk": gettext_lazy("the disk image"),
    "extra_media": gettext_lazy("the further disks"),
    "disk_set": gettext_lazy("the disk set"),
    "boot": gettext_lazy("the boot drive"),
    "cpu": gettext_lazy("the processor"),
    "memory_mb": gettext_lazy("the memory"),
    "vga": gettext_lazy("the graphics card"),
    "mouse": gettext_lazy("the mouse"),
    "accelerator": gettext_lazy("the emulation"),
    "speed": gettext_lazy("the speed"),
    "files_in": gettext_lazy("the drive for visitors' files"),
    "sound": gettext_lazy("the sound hardware"),
    "keyboard": gettext_lazy("the keyboard layout"),
    "code_page": gettext_lazy("the code page"),
    "printer": gettext_lazy("the printer"),
}


def configuration(exhibit: Exhibit) -> dict[str, Any]:
    """The exhibit's configuration as a plain, JSON-able value."""
    media = list(ExhibitMedia.objects.filter(exhibit_id=exhibit.pk).select_related("image")
                 .order_by("position", "pk"))
    disks = list(ExhibitDisk.objects.filter(exhibit_id=exhibit.pk).select_related("image")
                 .order_by("position", "pk"))
    machine = {name: getattr(exhibit, name) for name in MACHINE_FIELDS}
    return {
        "masters": {
            "boot_disk": exhibit.image.layers(),
            "extra_media": [sha for medium in media for sha in medium.image.layers()],
            "disk_set": [sha for disk in disks for sha in disk.image.layers()],
        },
        "boot_master": exhibit.image.sha256,
        "extra_media": [medium.image.sha256 for medium in media],
        "disk_set": [{"sha256": disk.image.sha256, "label": disk.label, "drive": disk.drive,
                      "in_drive_at_start": disk.in_drive_at_start,
                      "write_protected": disk.write_protected} for disk in disks],
        "profile": json.loads(json.dumps(dataclasses.asdict(exhibit.machine_profile()))),
        "machine": machine,
    }


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys, no spaces and UTF-8 text: the same value, the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def version_id(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()[:VERSION_LENGTH]


def version_record(exhibit_id: int) -> str | None:
    """Record the exhibit's configuration as a version (once per configuration) and
    keep Exhibit.version in step; returns the version id."""
    exhibit = Exhibit.objects.select_related("image").filter(pk=exhibit_id).first()
    if exhibit is None:
        return None
    config = configuration(exhibit)
    version = version_id(config)
    ExhibitVersion.objects.get_or_create(exhibit_id=exhibit_id, version=version,
                                         defaults={"configuration": config})
    if exhibit.version != version:
        Exhibit.objects.filter(pk=exhibit_id).update(version=version)
    return version


def versions_withdraw(image: DiskImage, *, reason: str) -> int:
    """Mark every version that uses this master (or builds on it) withdrawn; returns how many."""
    withdrawn = 0
    for version in ExhibitVersion.objects.filter(withdrawn_at__isnull=True):
        if image.sha256 in version.masters():
            version.withdrawn_at = timezone.now()
            version.withdrawn_reason = reason
            version.save(update_fields=["withdrawn_at", "withdrawn_reason"])
            withdrawn += 1
    return withdrawn


def versions_citing(image: DiskImage) -> list[ExhibitVersion]:
    """The versions still citable that use this master."""
    return [version for version in ExhibitVersion.objects.filter(withdrawn_at__isnull=True)
            .select_related("exhibit") if image.sha256 in version.masters()]


def exhibit_as_version(exhibit: Exhibit, version: ExhibitVersion) -> Exhibit | None:
    """The exhibit with the cited version's machine (a copy, never saved), or None when a
    master it needs is gone."""
    config = version.configuration
    image = DiskImage.objects.filter(sha256=config.get("boot_master")).first()
    if image is None or version.withdrawn_at is not None:
        return None
    if version.version == exhibit.version:
        return exhibit
    cited = copy.copy(exhibit)
    cited.cited_version = version.version
    for name, value in config.get("machine", {}).items():
        if name in MACHINE_FIELDS:
            setattr(cited, name, value)
    cited.image = image
    return cited


def exhibit_of_visit(exhibit: Exhibit, cited_version: str) -> Exhibit:
    """The exhibit as a visit runs it: the cited version's machine where the visit was
    started from one (and it is still there), the current one otherwise."""
    if not cited_version:
        return exhibit
    version = ExhibitVersion.objects.filter(exhibit_id=exhibit.pk, version=cited_version).first()
    if version is None:
        return exhibit
    if not exhibit.version:
        exhibit.version = version_record(exhibit.pk) or ""
    return exhibit_as_version(exhibit, version) or exhibit


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs between two configurations, as sentences' parts for visitors."""
    found: list[str] = []
    for part in ("boot_disk", "extra_media", "disk_set"):
        if old.get("masters", {}).get(part) != new.get("masters", {}).get(part) or (
                part == "disk_set" and old.get("disk_set") != new.get("disk_set")):
            found.append(str(PART_NAMES[part]))
    old_machine, new_machine = old.get("machine", {}), new.get("machine", {})
    sound = ("sound_adlib", "sound_sb16")
    for name in MACHINE_FIELDS:
        if name in sound or name in ("extra_media_kinds", "disk_drives"):
            continue
        if old_machine.get(name) != new_machine.get(name):
            found.append(gettext("%(part)s (%(old)s → %(new)s)") % {
                "part": PART_NAMES[name], "old": old_machine.get(name), "new": new_machine.get(name)})
    if any(old_machine.get(name) != new_machine.get(name) for name in sound):
        found.append(str(PART_NAMES["sound"]))
    return found


def public_url(path: str) -> str:
    """An absolute address on the portal, from its configured public origin."""
    return f"{settings.PORTAL_PUBLIC_URL}{path}"


def version_url(exhibit: Exhibit, version: str) -> str:
    return public_url(f"/exhibits/{exhibit.slug}/v/{version}/")


BIBTEX_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "&": r"\&", "%": r"\%",
                  "$": r"\$", "#": r"\#", "_": r"\_", "^": r"\^{}", "~": r"\~{}"}


def _bibtex(text: str) -> str:
    return "".join(BIBTEX_SPECIAL.get(char, char) for char in " ".join(text.split()))


def citation(exhibit: Exhibit, version: str, *, accessed: date | None = None) -> dict[str, Any]:
    """The exhibit's citation at this version: APA-like text, BibTeX and CSL-JSON, each
    naming the version and the day it was accessed (today unless given)."""
    accessed = accessed or timezone.localdate()
    url = version_url(exhibit, version)
    site = gettext("Preserved software")
    kind = "Video game" if exhibit.kind == Exhibit.Kind.GAME else "Computer software"
    author = exhibit.publisher or site
    year = str(exhibit.year) if exhibit.year else "n.d."
    text = (f"{author}. ({year}). {exhibit.title} (Version {version}) [{kind}, emulated]. {site}. "
            f"Accessed {accessed.isoformat()}. {url}")
    key = f"{exhibit.slug.replace('-', '_')}_{version}"
    fields = [("title", f"{{{_bibtex(exhibit.title)}}}"),
              ("author", f"{{{_bibtex(author)}}}"),
              *([("year", exhibit.year)] if exhibit.year else []),
              ("version", version),
              ("howpublished", f"{_bibtex(kind)}, emulated by {_bibtex(site)}"),
              ("url", url), ("urldate", accessed.isoformat()),
              ("note", f"Accessed {accessed.isoformat()}")]
    bibtex = f"@misc{{{key},\n" + ",\n".join(f"  {name} = {{{value}}}" for name, value in fields) + "\n}\n"
    csl: dict[str, Any] = {
        "id": key, "type": "software", "title": exhibit.title, "version": version, "URL": url,
        "publisher": site, "medium": "emulated",
        "author": [{"literal": author}],
        "accessed": {"date-parts": [[accessed.year, accessed.month, accessed.day]]},
    }
    if exhibit.year:
        csl["issued"] = {"date-parts": [[exhibit.year]]}
    if exhibit.rights:
        csl["note"] = exhibit.rights
    return {"text": text, "bibtex": bibtex, "csl": csl}
