"""Prepare an exhibit's start state, so visitors resume a booted machine at once."""
from __future__ import annotations

import asyncio
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from portal.models import Exhibit
from sessions.machines.prepare import PrepareError, StartCondition
from sessions.node.broker import Broker, BrokerConfig, exhibit_prepare


class Command(BaseCommand):
    help = (
        "Boot an exhibit, wait for its start state and save it: visitors then resume it "
        "instead of booting. By default the start state is reached when the screen has "
        "stayed still for --still seconds."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--still", type=float, default=2.0, metavar="SECONDS",
                            help="save once the screen has not changed for this long")
        parser.add_argument("--after", type=float, metavar="SECONDS",
                            help="save this long after power-on instead")
        parser.add_argument("--wait-text", metavar="TEXT",
                            help="first wait until the text screen shows TEXT (DOS prompts)")
        parser.add_argument("--wait-graphics", action="store_true",
                            help="first wait until the guest leaves text mode (desktops)")
        parser.add_argument("--keys", default="", metavar="QCODES",
                            help="then press these keys, comma-separated QEMU key names "
                                 "(ret, esc, spc, a, ...)")
        parser.add_argument("--timeout", type=float, default=120.0, metavar="SECONDS")
        parser.add_argument("--if-needed", action="store_true",
                            help="do nothing when the exhibit already has a usable start state")

    def handle(self, *args: Any, **options: Any) -> None:
        exhibit = Exhibit.objects.select_related("image").filter(slug=options["slug"]).first()
        if exhibit is None:
            raise CommandError(f"there is no exhibit {options['slug']!r}")
        condition = StartCondition(
            still_s=options["still"], after_s=options["after"], wait_text=options["wait_text"],
            keys=tuple(key for key in options["keys"].split(",") if key),
            wait_graphics=options["wait_graphics"], timeout_s=options["timeout"],
        )
        if options["if_needed"] and asyncio.run(_usable(exhibit)):
            self.stdout.write(f"{exhibit.slug} already has a usable start state.")
            return
        try:
            start = asyncio.run(exhibit_prepare(exhibit, condition))
        except PrepareError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(
            f"Prepared {exhibit.slug} in {start.prepare_seconds:.1f} s ({start.method}); "
            f"warm layer sha256 {start.warm_sha256}, state sha256 {start.state_sha256}"
        )


async def _usable(exhibit: Exhibit) -> bool:
    broker = Broker(BrokerConfig.from_settings())
    return await broker.launcher.start_state_usable(exhibit) is not None
