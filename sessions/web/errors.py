"""The web edge's one translation of the runtime's errors (`sessions.errors`):
into the API's JSON error (its status, `error` code, `detail` sentence, more
fields and Retry-After), and into a WebSocket's close code and reason; both
in the visitor's language (the one active for the request or socket).

Must not: decide what an error means; each error says so itself.
"""
from __future__ import annotations

import re
from functools import cache
from typing import Any

from django.http import JsonResponse
from django.utils.translation import gettext, ngettext

from portal.errors import json_error
from portal.language import close_reason
from sessions.errors import SessionError
from sessions.node.keeper import END_TEMPLATES

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")
_MINUTES = re.compile(r"(\d+) minutes?")


def sentence_fill(message: str, params: dict[str, Any]) -> str:
    """The sentence in the active language with its values filled in; a value that
    is itself a sentence of the catalogue is translated too. Falls back to English
    when a translation's placeholders do not fit (the catalogues' test keeps them so)."""
    values = {name: value_translate(value) for name, value in params.items()}
    try:
        return gettext(message) % values if params else gettext(message)
    except (KeyError, ValueError, TypeError):
        return message % params if params else message


def value_translate(value: Any) -> Any:
    """A value of a sentence, in the active language: a sentence of the catalogue,
    or a duration the runtime wrote in English ("30 minutes")."""
    if not isinstance(value, str):
        return value
    if (minutes := _MINUTES.fullmatch(value)) is not None:
        count = int(minutes.group(1))
        return ngettext("%(count)s minute", "%(count)s minutes", count) % {"count": count}
    return gettext(value) if value else value


def error_detail(error: SessionError) -> str:
    """The error's sentence in the active language."""
    return sentence_fill(error.message, error.params) if error.message else str(error)


@cache
def _stored_patterns() -> list[tuple[str, re.Pattern[str]]]:
    patterns = []
    for template in END_TEMPLATES:
        parts = _PLACEHOLDER.split(template)
        # split alternates text and placeholder names: text, name, text, name, text...
        pattern = "".join(re.escape(part) if index % 2 == 0 else f"(?P<{part}>.+?)"
                          for index, part in enumerate(parts))
        patterns.append((template, re.compile(pattern)))
    return patterns


def stored_sentence(text: str) -> str:
    """A sentence the runtime stored in English (a visit's end, its `detail`), in the
    active language: a sentence of the catalogue as it is, or one written from a
    template with a value (`END_TEMPLATES`), whose value is found again."""
    if not text:
        return text
    translated = gettext(text)
    if translated != text:
        return translated
    for template, pattern in _stored_patterns():
        found = pattern.fullmatch(text)
        if found is not None:
            return sentence_fill(template, found.groupdict())
    return text


def error_response(error: SessionError) -> JsonResponse:
    """The API's answer to a runtime error."""
    response = json_error(error.status, error.code, error_detail(error), **error.fields())
    if error.retry_after_s is not None:
        response["Retry-After"] = str(error.retry_after_s)
    return response


def error_close(error: SessionError) -> tuple[int, str]:
    """The close code and reason a socket closes with for a runtime error."""
    return error.close_code, close_reason(error_detail(error))
