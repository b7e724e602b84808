"""The portal in the visitor's language: every visitor page and the API's error
details in English, German, French and Spanish, chosen by Accept-Language or by
the page's switcher (remembered, also inside another site's frame), with nothing
left in English that the catalogue translates; exhibits' own translated titles."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from django.conf import settings
from django.test import AsyncClient

from sessions.models import VisitorSession
from sessions.web.consumers import CLOSE_UNKNOWN
from tests.conftest import FREEDOS_2048, ExhibitFactory, visitor, ws_communicator
from tests.support.english import english_left

pytestmark = pytest.mark.django_db(transaction=True)

LANGUAGES = [code for code, _ in settings.LANGUAGES]
TRANSLATED = [code for code in LANGUAGES if code != "en"]
TITLES = {"en": "FreeDOS 2048", "de": "FreeDOS 2048 (deutsch)", "fr": "FreeDOS 2048 (français)",
          "es": "FreeDOS 2048 (español)"}
# One sentence of each kind, as a visitor reads it in each language.
NO_SUCH_SESSION = {"en": "There is no such session.", "de": "Diese Sitzung gibt es nicht.",
                   "fr": "Cette session n\u2019existe pas.", "es": "Esa sesión no existe."}


class Speaking(AsyncClient):
    """A browser whose languages start with this one (Accept-Language on every request)."""

    def __init__(self, language: str) -> None:
        super().__init__()
        self.accept_language = f"{language},en;q=0.5"

    def generic(self, *args: Any, headers: Mapping[str, Any] | None = None,
                **kwargs: Any) -> Any:
        return super().generic(*args, headers={"accept-language": self.accept_language, **(headers or {})},
                               **kwargs)


def speaking(language: str) -> Speaking:
    return Speaking(language)


async def translated_exhibit(exhibit_create: ExhibitFactory) -> None:
    from portal.models import Exhibit

    await exhibit_create(FREEDOS_2048, slug="freedos", title="FreeDOS 2048")
    await Exhibit.objects.filter(slug="freedos").aupdate(
        provenance_source="the FreeDOS project", provenance_donor="its authors",
        translations={code: {"title": title, "description": f"({code})"}
                      for code, title in TITLES.items() if code != "en"})


async def test_it_shows_every_visitor_page_in_the_browsers_language(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await translated_exhibit(exhibit_create)
    owner = speaking("de")
    started = await owner.post("/api/exhibits/freedos/sessions")
    assert started.status_code == 201
    session = started.json()
    await broker.viewers.display_attach(session_id=session["id"])
    broker.viewers.display_detach(session_id=session["id"])
    link = (await owner.post(f"/api/sessions/{session['id']}/watchers")).json()["watch_url"]

    pages = ["/", "/exhibits/freedos/", "/exhibits/freedos/embed", "/no/such/page/", session["page_url"],
             session["page_url"] + "?embed=1", link]
    for language in LANGUAGES:
        for path in pages:
            client = speaking(language)
            client.cookies = owner.cookies
            response = await client.get(path)
            page = response.content.decode()
            assert response.status_code == (404 if path.startswith("/no/") else 200), path
            assert f'<html lang="{language}">' in page, (language, path)
            assert f'src="/jsi18n/{language}.js"' in page, "the scripts' words, before the scripts"
            assert 'action="/i18n/setlang/"' in page, f"{path}: a way to another language"
            if language != "en":
                assert english_left(page, language) == [], (language, path)
        exhibit_page = (await speaking(language).get("/exhibits/freedos/")).content.decode()
        assert f"<h1>{TITLES[language]}</h1>" in exhibit_page

    # The machine's page in each of its states the server writes: running (above), ended,
    # and, as its row says, waiting in line and starting.
    await owner.delete(f"/api/sessions/{session['id']}")
    labels = {"ended": {"de": "beendet", "fr": "terminée", "es": "terminada"},
              "queued": {"de": "wartet", "fr": "en attente", "es": "en espera"},
              "starting": {"de": "startet", "fr": "démarrage", "es": "arrancando"}}
    for state, label in labels.items():
        await VisitorSession.objects.filter(id=session["id"]).aupdate(state=state)
        for language in TRANSLATED:
            client = speaking(language)
            client.cookies = owner.cookies
            page = (await client.get(session["page_url"])).content.decode()
            assert english_left(page, language) == [], (state, language)
            assert f'data-state="{state}">{label[language]}' in page, (state, language)


async def test_it_answers_the_apis_errors_in_the_visitors_language_with_english_codes(
    broker: Any, exhibit_create: ExhibitFactory
) -> None:
    await translated_exhibit(exhibit_create)
    for language in LANGUAGES:
        client = speaking(language)
        missing = await client.get("/api/sessions/" + "x" * 32)
        assert missing.json() == {"error": "not_found", "detail": NO_SUCH_SESSION[language]}
        refused = await client.put("/api/exhibits")
        assert refused.json()["error"] == "method_not_allowed"
        assert refused.json()["detail"] == {
            "en": "This address takes GET only.", "de": "Diese Adresse nimmt nur GET an.",
            "fr": "Cette adresse n\u2019accepte que GET.", "es": "Esta dirección solo admite GET."}[language]
        exhibit = (await client.get("/api/exhibits/freedos")).json()
        assert exhibit["title"] == TITLES[language]
        assert exhibit["language"] == language
    # A language the curators gave nothing in: the original, saying which language it is.
    exhibit = (await speaking("it").get("/api/exhibits/freedos")).json()
    assert (exhibit["title"], exhibit["language"]) == ("FreeDOS 2048", "en")


async def test_it_serves_the_scripts_catalogue_per_language_for_caches(broker: Any) -> None:
    catalogue = await speaking("fr").get("/jsi18n/de.js")
    assert catalogue.status_code == 200
    assert catalogue["Content-Language"] == "de"
    assert "public" in catalogue["Cache-Control"]
    script = catalogue.content.decode()
    assert '"Every machine is in use.": "Alle Maschinen sind belegt."' in script
    again = await speaking("fr").get("/jsi18n/de.js",
                                     headers={"if-modified-since": catalogue["Last-Modified"]})
    assert again.status_code == 304
    assert (await visitor().get("/jsi18n/xx.js")).status_code == 404


async def test_it_closes_a_socket_with_a_reason_in_the_visitors_language(broker: Any) -> None:
    client = visitor()
    client.cookies["django_language"] = "fr"
    communicator = ws_communicator(client, "/ws/sessions/" + "x" * 32 + "/vnc")
    connected, _ = await communicator.connect(timeout=10)
    assert connected
    closed = await communicator.receive_output(timeout=10)
    assert closed["code"] == CLOSE_UNKNOWN
    assert closed["reason"] == "Cette session n\u2019existe pas."
    await communicator.wait()


async def test_it_remembers_the_language_the_switcher_chose_without_scripts(
    broker: Any, exhibit_create: ExhibitFactory, settings: Any
) -> None:
    await translated_exhibit(exhibit_create)
    browser = speaking("de")
    page = (await browser.get("/exhibits/freedos/embed")).content.decode()
    token = browser.cookies["csrftoken"].value
    assert '<option value="fr" lang="fr">Français</option>' in page
    chosen = await browser.post("/i18n/setlang/", {"language": "fr", "next": "/exhibits/freedos/embed",
                                                   "csrfmiddlewaretoken": token})
    assert chosen.status_code == 302
    assert chosen["Location"] == "/exhibits/freedos/embed"
    assert browser.cookies["django_language"].value == "fr"
    # The German browser reads French from now on: the choice beats Accept-Language.
    page = (await browser.get("/exhibits/freedos/embed")).content.decode()
    assert '<html lang="fr">' in page
    assert "Démarrer" in page
    assert (await browser.get("/api/sessions/" + "x" * 32)).json()["detail"] == NO_SUCH_SESSION["fr"]
    # Another site's frame: the language cookie is kept there like the visitor's own.
    settings.PORTAL_COOKIES_CROSS_SITE = True
    settings.LANGUAGE_COOKIE_SAMESITE = "None"
    settings.LANGUAGE_COOKIE_SECURE = True
    chosen = await browser.post("/i18n/setlang/", {"language": "es", "next": "/",
                                                   "csrfmiddlewaretoken": token})
    cookie = chosen.cookies["django_language"]
    assert cookie.value == "es"
    assert "SameSite=None; Partitioned" in cookie.output()
    assert "Secure" in cookie.output()
