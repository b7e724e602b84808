"""An exhibit's title and description in more languages: the visitor's where the
curators gave it, the original otherwise; what bags and derivatives carry of them."""
from __future__ import annotations

from django.utils import translation

from portal.bags import translations_valid
from portal.images import description_translations
from portal.management.commands.add_exhibit import translations_given
from portal.models import Exhibit


def exhibit() -> Exhibit:
    return Exhibit(title="The demo", description="A desktop.", language="en",
                   translations={"de": {"title": "Die Demo", "description": "Ein Schreibtisch."},
                                 "fr": {"title": "La démo"}})


def test_it_shows_the_visitors_language_and_falls_back_to_the_original() -> None:
    shown = exhibit()
    with translation.override("de"):
        assert (shown.shown_title, shown.shown_description) == ("Die Demo", "Ein Schreibtisch.")
        assert (shown.shown_title_language, shown.shown_description_language) == ("de", "de")
    with translation.override("fr"):
        assert (shown.shown_title, shown.shown_title_language) == ("La démo", "fr")
        assert (shown.shown_description, shown.shown_description_language) == ("A desktop.", "en")
    with translation.override("es"):
        assert (shown.shown_title, shown.shown_description) == ("The demo", "A desktop.")


def test_a_derivative_keeps_the_descriptions_but_not_the_titles() -> None:
    assert description_translations(exhibit()) == {"de": {"description": "Ein Schreibtisch."}}


def test_a_bag_may_carry_only_titles_and_descriptions_by_language() -> None:
    assert translations_valid(exhibit().translations)
    assert translations_valid({})
    assert not translations_valid([])
    assert not translations_valid({"de": "Die Demo"})
    assert not translations_valid({"de": {"title": 7}})
    assert not translations_valid({"de": {"subtitle": "x"}})
    assert not translations_valid({"de": {"title": "x" * 201}})
    assert not translations_valid({"": {"title": "x"}})


def test_add_exhibit_takes_titles_and_descriptions_in_more_languages() -> None:
    assert translations_given([["DE", "Die Demo"]], [["de", "Ein Schreibtisch."], ["fr", "Un bureau."]]) == {
        "de": {"title": "Die Demo", "description": "Ein Schreibtisch."}, "fr": {"description": "Un bureau."}}
