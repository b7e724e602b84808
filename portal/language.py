"""The visitor's language: which one a request or a socket is in, and what the
pages need to offer the others.

Owns: reading the language of a WebSocket's scope the way Django's
LocaleMiddleware reads a request's (the language cookie the page's switcher
sets, else Accept-Language, else English), and the language switcher's
choices for the templates.

Must not: translate anything itself; Django's catalogues do (locale/).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import translation


def scope_language(scope: Mapping[str, Any]) -> str:
    """The language of an ASGI scope (a WebSocket's): its language cookie, else
    its Accept-Language header, else the portal's default."""
    request = HttpRequest()
    request.COOKIES = dict(scope.get("cookies") or {})
    for name, value in scope.get("headers") or ():
        if name == b"accept-language":
            request.META["HTTP_ACCEPT_LANGUAGE"] = value.decode("latin-1")
    return translation.get_language_from_request(request)


def languages(request: HttpRequest) -> dict[str, Any]:
    """Template context: the languages a visitor may switch to, each by its own
    name ("Deutsch", "Français"), and the page's own."""
    current = translation.get_language() or settings.LANGUAGE_CODE
    choices = [{"code": code, "name": translation.get_language_info(code)["name_local"]}
               for code, _ in settings.LANGUAGES]
    return {"portal_languages": choices, "portal_language": current}
