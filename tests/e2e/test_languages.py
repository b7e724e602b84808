"""A German visitor in Chromium (its language German, as the browser says in
Accept-Language): the exhibit list, the exhibit page and the machine's page in
German, the page scripts' messages too, then another language chosen with the
page's switcher and kept from then on."""
from __future__ import annotations

import json
import re
import socket
from typing import Any

from tests.e2e.conftest import Portal

GERMAN_DEMO = ("from portal.models import Exhibit; Exhibit.objects.filter(slug='demo').update("
               "translations={'de': {'title': 'Portal-Demo', "
               "'description': 'Ein freier Ersatz für einen Windows-3.1-Desktop.'}})")


def test_it_speaks_german_to_a_german_browser_and_remembers_another_choice(
    portal: Portal, browser: Any
) -> None:
    portal.manage("shell", "-c", GERMAN_DEMO)
    context = browser.new_context(locale="de-DE", viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.goto(portal.url + "/")
    assert page.locator("html").get_attribute("lang") == "de"
    assert page.get_by_role("heading", name="Exponate").is_visible()
    assert page.get_by_text("Echte PCs von früher, die in Ihrem Browser laufen.").is_visible()

    page.get_by_role("link", name="Portal-Demo").click()
    assert page.get_by_role("heading", name="Portal-Demo").is_visible()
    assert page.get_by_text("Ein freier Ersatz für einen Windows-3.1-Desktop.").is_visible()
    assert page.get_by_text(
        "Ein 486-PC mit 16 MiB Arbeitsspeicher, der von seiner Festplatte startet.").is_visible()
    page.get_by_role("button", name="Starten").click()

    # The machine's page: the server's words, and the scripts' (state, keys, sound, checkpoints).
    page.wait_for_url(re.compile(r"/sessions/[A-Za-z0-9_-]{32}/$"))
    page.wait_for_selector('#state[data-state="running"]', timeout=30_000)
    page.wait_for_function("() => document.getElementById('state').textContent === 'läuft'", timeout=30_000)
    assert page.locator("html").get_attribute("lang") == "de"
    for name in ("Zurücksetzen", "Vollbild", "Beenden", "Einfügen", "Bildschirmfoto"):
        assert page.get_by_role("button", name=name, exact=True).or_(
            page.get_by_role("link", name=name, exact=True)).is_visible(), name
    assert page.locator("#sound .label").inner_text() == "Ton"
    page.get_by_role("button", name="Tastatur").click()
    assert page.get_by_role("group", name="Bildschirmtastatur").is_visible()
    assert page.locator('#osk button[data-code="ControlLeft"]').inner_text() == "Strg"
    page.get_by_role("button", name="Sicherungspunkt speichern").click()
    page.wait_for_function(
        "() => /^„.+“ in \\d+ ms gespeichert\\.$/"
        ".test(document.getElementById('checkpoint-status').textContent)", timeout=30_000)
    assert page.locator("#checkpoint-list").get_by_role("button", name="Zurückkehren").is_visible()

    page.get_by_role("button", name="Beenden", exact=True).click()
    notice = page.locator("#notice")
    notice.get_by_text("Diese Maschine wurde beendet.").wait_for(timeout=30_000)
    assert notice.get_by_text("Die Sitzung wurde vom Besucher beendet.").is_visible(), "the server's detail"
    assert notice.get_by_text("Alles, was in diesem Besuch getan wurde, ist verworfen.").is_visible()
    assert page.locator("#state").inner_text() == "beendet"

    # Another language from the switcher (no script needed): kept over the browser's German.
    page.get_by_label("Sprache").select_option("fr")
    page.get_by_role("button", name="Wechseln").click()
    page.wait_for_function("() => document.documentElement.lang === 'fr'")
    assert page.get_by_text("Cette machine s\u2019est arrêtée.").is_visible()
    page.goto(portal.url + "/")
    assert page.get_by_role("heading", name="Pièces").is_visible()
    page.get_by_role("link", name="Portal demo").click()
    assert page.get_by_role("button", name="Démarrer").is_visible()
    assert page.locator("h1").get_attribute("lang") == "en", "the original title, marked as English"
    context.close()

    # The server's own refusal, before any of Django runs, in the asker's language too.
    with socket.create_connection(("127.0.0.1", portal.port), timeout=30) as connection:
        connection.sendall(b"POST /api/csrf HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept-Language: es\r\n"
                           b"Content-Length: 314572800\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    refusal = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert refusal["error"] == "body_too_large"
    assert refusal["detail"].startswith("El cuerpo de la solicitud (314572800 bytes) supera el límite")
