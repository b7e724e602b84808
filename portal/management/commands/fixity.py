"""Re-hash every stored master and record each check; exits 1 if any failed.

A master that fails can no longer be started and is flagged in the admin.
The check opens masters read-only and never writes them.
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from portal.images import fixity_check_all
from portal.record import agent_command


class Command(BaseCommand):
    help = "Check the fixity (SHA-256) of every master and record the result."

    def handle(self, *args: Any, **options: Any) -> None:
        summary = fixity_check_all(agent=agent_command("fixity"))
        for image in summary.failed:
            self.stderr.write(f"FAILED: disk image {image.pk} {image.original_name} ({image.path})")
        self.stdout.write(f"Checked {summary.checked} masters, {len(summary.failed)} failed.")
        if summary.failed:
            raise CommandError(f"{len(summary.failed)} masters failed their fixity check")
