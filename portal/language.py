"""The visitor's language: which one a request or a socket is in, and what the
pages need to offer the others.

Owns: reading the language of a WebSocket's scope the way Django's
LocaleMiddleware reads a request's (the language cookie the page's switcher
sets, else Accept-Language, else English), a close frame's reason fitted to
its 123 bytes, and the language switcher's choices for the templates.

Must not: translate anything itself; Django's catalogues do (locale/).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.http.cookie import parse_cookie
from django.utils import translation


def scope_language(scope: Mapping[str, Any]) -> str:
    """The language of an ASGI scope (a WebSocket's): its language cookie, else
    its Accept-Language header, else the portal's default."""
    request = HttpRequest()
    request.COOKIES = dict(scope.get("cookies") or {})
    for name, value in scope.get("headers") or ():
        if name == b"accept-language":
            request.META["HTTP_ACCEPT_LANGUAGE"] = value.decode("latin-1")
        elif name == b"cookie" and "cookies" not in scope:
            # A scope no cookie middleware has read yet (the relay's).
            request.COOKIES.update(parse_cookie(value.decode("latin-1")))
    return translation.get_language_from_request(request)


# A WebSocket close frame's reason is at most 123 bytes of UTF-8 (RFC 6455, 5.5).
CLOSE_REASON_MAX_BYTES = 123


def close_reason(text: str) -> str:
    """A close frame's reason: the sentence, cut at a character boundary (ending in
    "…") when its UTF-8 is longer than a close frame may carry (a translation may be)."""
    encoded = text.encode()
    if len(encoded) <= CLOSE_REASON_MAX_BYTES:
        return text
    ellipsis = "…".encode()
    cut = encoded[:CLOSE_REASON_MAX_BYTES - len(ellipsis)].decode("utf-8", "ignore")
    return cut.rstrip() + "…"


def languages(request: HttpRequest) -> dict[str, Any]:
    """Template context: the languages a visitor may switch to, each by its own
    name ("Deutsch", "Français"), and the page's own."""
    current = translation.get_language() or settings.LANGUAGE_CODE
    choices = [{"code": code, "name": translation.get_language_info(code)["name_local"]}
               for code, _ in settings.LANGUAGES]
    return {"portal_languages": choices, "portal_language": current}
