"""Give exhibits without a thumbnail one: each is booted once and its screen taken."""
from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from portal.models import Exhibit
from sessions.machines.launcher import exhibit_picture
from sessions.web.admin import picture_condition


class Command(BaseCommand):
    help = (
        "Take a thumbnail for every exhibit that has none (or for the exhibits named): each "
        "is booted once on a throwaway disk and its screen taken once it is still. Exhibits "
        "with a thumbnail are left alone, so running it again does nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slugs", nargs="*", help="only these exhibits (default: every one without)")
        parser.add_argument("--again", action="store_true",
                            help="take the named exhibits' thumbnails again (not curators' choices)")

    def handle(self, *args: Any, **options: Any) -> None:
        exhibits = Exhibit.objects.select_related("image").order_by("pk")
        if options["slugs"]:
            exhibits = exhibits.filter(slug__in=options["slugs"])
        if not options["again"]:
            exhibits = exhibits.filter(thumbnail="")
        for exhibit in exhibits:
            name = asyncio.run(exhibit_picture(exhibit, picture_condition(exhibit)))
            if name is None:
                problem = Exhibit.objects.filter(pk=exhibit.pk).values_list("thumbnail_problem", flat=True)
                self.stderr.write(f"{exhibit.slug}: {problem.first() or 'no thumbnail'}")
            else:
                self.stdout.write(f"{exhibit.slug}: thumbnail {name}")
