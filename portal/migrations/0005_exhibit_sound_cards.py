"""Sound hardware as the PC speaker (always) and a choice of cards.

Exhibits had one `sound` choice (none, sb16, adlib or pcspk); each keeps its card.
"""
from __future__ import annotations

from typing import Any

from django.db import migrations, models


def cards_from_choice(apps: Any, schema_editor: Any) -> None:
    Exhibit = apps.get_model("portal", "Exhibit")
    Exhibit.objects.filter(sound="adlib").update(sound_adlib=True)
    Exhibit.objects.filter(sound="sb16").update(sound_sb16=True)


def choice_from_cards(apps: Any, schema_editor: Any) -> None:
    Exhibit = apps.get_model("portal", "Exhibit")
    Exhibit.objects.filter(sound_adlib=True).update(sound="adlib")
    Exhibit.objects.filter(sound_sb16=True).update(sound="sb16")


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0004_curators"),
    ]

    operations = [
        migrations.AddField(
            model_name="exhibit",
            name="sound_adlib",
            field=models.BooleanField(default=False, help_text="An AdLib card (Yamaha OPL2 FM synthesis, port 388h): the music of most DOS games from 1988 on.", verbose_name="AdLib"),
        ),
        migrations.AddField(
            model_name="exhibit",
            name="sound_sb16",
            field=models.BooleanField(default=False, help_text="A Sound Blaster 16 (port 220h, IRQ 5, DMA 1 and 5): digitised sound and speech. The PC speaker is always there.", verbose_name="Sound Blaster 16"),
        ),
        migrations.RunPython(cards_from_choice, choice_from_cards),
        migrations.RemoveField(
            model_name="exhibit",
            name="sound",
        ),
    ]
