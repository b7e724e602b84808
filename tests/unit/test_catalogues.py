"""Every catalogue is whole: each English sentence the pages, the page scripts and
the API's details use is translated into every language the portal ships, none is
left fuzzy, each translation keeps its sentence's placeholders, and msgfmt takes
each catalogue with --check (as `make setup` compiles it)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from tests.support.catalogues import (
    DOMAINS,
    LOCALE,
    PLACEHOLDER,
    REPO,
    catalogue_path,
    catalogue_read,
)

TRANSLATED = [code for code, _ in settings.LANGUAGES if code != settings.LANGUAGE_CODE]
# What `make messages` leaves out (the Makefile's MESSAGES_IGNORE): the catalogues hold
# the portal's own code and templates, never the curators' admin scripts.
IGNORED = ["static/portal/upload.js", "static/portal/live-visits.js"]


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("language", TRANSLATED)
def test_it_translates_every_entry_and_leaves_none_fuzzy(language: str, domain: str) -> None:
    entries = catalogue_read(catalogue_path(language, domain))
    assert len(entries) > 50
    untranslated = [entry.english for entry in entries if not all(entry.translations.values())
                    or len(entry.translations) < (2 if entry.plural else 1)]
    fuzzy = [entry.english for entry in entries if entry.fuzzy]
    assert not untranslated, f"{language} {domain}: untranslated: {untranslated}"
    assert not fuzzy, f"{language} {domain}: fuzzy: {fuzzy}"


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("language", TRANSLATED)
def test_it_keeps_every_placeholder_in_every_translation(language: str, domain: str) -> None:
    wrong = []
    for entry in catalogue_read(catalogue_path(language, domain)):
        for index, translation in entry.translations.items():
            english = entry.plural if entry.plural and index > 0 else entry.english
            if sorted(PLACEHOLDER.findall(translation)) != sorted(PLACEHOLDER.findall(english)):
                wrong.append((english, translation))
    assert not wrong, f"{language} {domain}: placeholders differ: {wrong}"


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("language", TRANSLATED)
def test_it_compiles_each_catalogue_with_msgfmt_check(language: str, domain: str, tmp_path: Path) -> None:
    said = subprocess.run(["msgfmt", "--check", "--statistics", "-o", str(tmp_path / "out.mo"),
                           str(catalogue_path(language, domain))], capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    assert "fuzzy" not in said.stderr, said.stderr
    assert "untranslated" not in said.stderr, said.stderr
    assert "translated message" in said.stderr


def test_it_has_every_sentence_of_the_code_in_its_catalogues(tmp_path: Path) -> None:
    """makemessages over the code finds nothing the catalogues lack: a sentence added to
    a template, a script or the runtime's errors is translated in the same change.
    It runs over a copy of the code (makemessages writes beside what it reads)."""
    for part in ("portal", "sessions", "templates", "static", "locale", "manage.py"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__", "*.mo"))
        else:
            shutil.copy(source, tmp_path / part)
    environment = {**os.environ, "PORTAL_DATA_DIR": str(tmp_path / "var")}
    for domain in DOMAINS:
        subprocess.run([sys.executable, "manage.py", "makemessages", "--domain", domain, "--no-obsolete",
                        "--verbosity", "0", *(f"--locale={code}" for code in TRANSLATED),
                        *(f"--ignore={pattern}" for pattern in IGNORED)],
                       cwd=tmp_path, env=environment, check=True)
    for language in TRANSLATED:
        for domain in DOMAINS:
            fresh = {(entry.context, entry.english) for entry in
                     catalogue_read(catalogue_path(language, domain, tmp_path / "locale"))}
            kept = {(entry.context, entry.english)
                    for entry in catalogue_read(catalogue_path(language, domain))}
            assert fresh - kept == set(), f"{language} {domain}: new, not translated: {sorted(fresh - kept)}"
            assert kept - fresh == set(), f"{language} {domain}: gone from the code: {sorted(kept - fresh)}"


def test_it_ships_a_catalogue_for_every_language_and_no_other() -> None:
    shipped = {path.name for path in LOCALE.iterdir() if path.is_dir()}
    assert shipped == set(TRANSLATED)
    assert (REPO / "locale") == LOCALE
