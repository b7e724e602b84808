"""Exhibits' thumbnails: the store of pictures named by their SHA-256, in the sizes the
pages need, and what an exhibit records of them.

Owns: checking that a screen shows something, writing a picture and its gallery-sized
copy into PORTAL_THUMBNAIL_DIR (read-only, content-addressed, so they are served as
immutable files without the database), and the exhibit's thumbnail fields.

Must not: take screens (the runtime does, from a start state being made or a preview).
"""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from django.conf import settings
from PIL import Image

from .models import Exhibit

# The gallery's pictures are this wide (twice the 160 CSS pixels they take, for sharp
# screens); the full picture (the guest's screen as it was) is the page's and the
# preview cards' (Open Graph asks for at least 200 pixels).
SMALL_WIDTH = 320


def png_has_content(png: bytes) -> bool:
    """True when the guest has drawn something: the picture is not one flat colour
    (a text screen's few characters count; a lone cursor does not)."""
    try:
        with Image.open(io.BytesIO(png)) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError):
        return False
    width, height = picture.size
    colours = picture.getcolors(maxcolors=4096)
    if colours is None:
        return True  # thousands of colours: a picture
    counts = sorted(count for count, _ in colours)
    return sum(counts[:-1]) >= max(1, width * height // 1000)


def thumbnail_store(png: bytes, *, store: Path) -> str:
    """Write the PNG as <sha256>.png (read-only) and return that name."""
    store.mkdir(parents=True, exist_ok=True)
    name = f"{hashlib.sha256(png).hexdigest()}.png"
    final = store / name
    if not final.exists():
        temporary = store / f".{name}.{os.getpid()}.incoming"
        temporary.write_bytes(png)
        os.chmod(temporary, 0o444)
        os.replace(temporary, final)
    return name


def small_png(png: bytes) -> bytes:
    """The picture scaled to SMALL_WIDTH (its aspect kept; a smaller one as it is)."""
    with Image.open(io.BytesIO(png)) as opened:
        picture: Image.Image = opened.convert("RGB")
    width, height = picture.size
    if width > SMALL_WIDTH:
        picture = picture.resize((SMALL_WIDTH, max(1, round(height * SMALL_WIDTH / width))),
                                 Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def thumbnail_set(exhibit_id: int, png: bytes, *, chosen: bool = False) -> str:
    """Store the picture in both sizes and make it the exhibit's thumbnail; with
    `chosen`, a curator picked it (a new start state then keeps it). Returns its name."""
    store = Path(settings.PORTAL_THUMBNAIL_DIR)
    name = thumbnail_store(png, store=store)
    small = thumbnail_store(small_png(png), store=store)
    Exhibit.objects.filter(pk=exhibit_id).update(thumbnail=name, thumbnail_small=small,
                                                 thumbnail_chosen=chosen, thumbnail_problem="")
    return name


def thumbnail_from_screen(exhibit_id: int, png: bytes | None, *, why_none: str) -> str | None:
    """A start state's or first boot's screen becomes the exhibit's thumbnail unless a
    curator chose one; a blank screen leaves it without one and says why (the admin shows it)."""
    exhibit = Exhibit.objects.filter(pk=exhibit_id).only("thumbnail", "thumbnail_chosen").first()
    if exhibit is None or (exhibit.thumbnail_chosen and exhibit.thumbnail):
        return None
    if png is None or not png_has_content(png):
        Exhibit.objects.filter(pk=exhibit_id).update(thumbnail_problem=why_none)
        return None
    return thumbnail_set(exhibit_id, png)
