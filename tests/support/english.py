"""What of a page is still in English where the catalogue has its translation: the
words a visitor reads or hears (text, and the title, aria-label, alt and placeholder
attributes), compared with the English sentences of the page's language's catalogue."""
from __future__ import annotations

import html
from html.parser import HTMLParser

from tests.support.catalogues import PLACEHOLDER, catalogue_path, catalogue_read

# Attributes whose words a visitor reads or a screen reader speaks.
SPOKEN = ("title", "aria-label", "alt", "placeholder")
# Elements whose contents are not words for the visitor (code, data, the embed snippet).
SILENT = {"script", "style", "textarea"}


class _Words(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self._silent = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in SILENT:
            self._silent += 1
        self.words += [value.strip() for name, value in attrs if name in SPOKEN and value]

    def handle_endtag(self, tag: str) -> None:
        if tag in SILENT:
            self._silent -= 1

    def handle_data(self, data: str) -> None:
        if not self._silent and data.strip():
            self.words.append(" ".join(data.split()))


def page_words(page: str) -> list[str]:
    parser = _Words()
    parser.feed(page)
    return parser.words


def english_left(page: str, language: str, *, domain: str = "django") -> list[str]:
    """The catalogue's English sentences (those translated differently) that the page
    still shows: a text or attribute that is one of them whole, or one that holds a
    sentence of three words or more (with its placeholders' values in between)."""
    words = page_words(page)
    text = " | ".join(words)
    found = []
    for entry in catalogue_read(catalogue_path(language, domain)):
        english = html.unescape(entry.english)
        if entry.plural is not None or html.unescape(entry.translations.get(0, "")) == english:
            continue
        parts = [part.strip() for part in PLACEHOLDER.split(english)[::2] if part.strip()]
        if english in words or any(len(part.split()) >= 3 and part in text for part in parts):
            found.append(english)
    return found
