"""The portal's translation catalogues (locale/<language>/LC_MESSAGES/*.po) as the
tests read them: each entry's context, English, plural and translations, and
whether it is marked fuzzy. A reader of the subset of the PO format that
makemessages writes, so the tests need no library of their own."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
LOCALE = REPO / "locale"
DOMAINS = ("django", "djangojs")
PLACEHOLDER = re.compile(r"%\((\w+)\)s")


@dataclass
class Entry:
    context: str | None = None
    english: str = ""
    plural: str | None = None
    translations: dict[int, str] = field(default_factory=dict)
    fuzzy: bool = False


def catalogue_path(language: str, domain: str, root: Path = LOCALE) -> Path:
    return root / language / "LC_MESSAGES" / f"{domain}.po"


def catalogue_read(path: Path) -> list[Entry]:
    """The catalogue's entries, its header (the entry with no English) left out."""
    entries: list[Entry] = []
    for block in path.read_text(encoding="utf-8").strip().split("\n\n"):
        entry, target = Entry(), ""
        for line in block.splitlines():
            if line.startswith("#,"):
                entry.fuzzy = "fuzzy" in line
                continue
            if line.startswith("#"):
                continue
            keyword, _, rest = line.partition(" ")
            if line.startswith('"'):
                text = ast.literal_eval(line)
            else:
                target, text = keyword, ast.literal_eval(rest)
            if target == "msgctxt":
                entry.context = (entry.context or "") + text
            elif target == "msgid":
                entry.english += text
            elif target == "msgid_plural":
                entry.plural = (entry.plural or "") + text
            elif target.startswith("msgstr"):
                index = int(target[7:-1]) if "[" in target else 0
                entry.translations[index] = entry.translations.get(index, "") + text
        if entry.english:
            entries.append(entry)
    return entries
