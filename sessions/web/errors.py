"""The web edge's one translation of the runtime's errors (`sessions.errors`):
into the API's JSON error (its status, `error` code, `detail` sentence, more
fields and Retry-After), and into a WebSocket's close code and reason.

Must not: decide what an error means; each error says so itself.
"""
from __future__ import annotations

from django.http import JsonResponse

from portal.errors import json_error
from sessions.errors import SessionError


def error_response(error: SessionError) -> JsonResponse:
    """The API's answer to a runtime error."""
    response = json_error(error.status, error.code, str(error), **error.fields())
    if error.retry_after_s is not None:
        response["Retry-After"] = str(error.retry_after_s)
    return response


def error_close(error: SessionError) -> tuple[int, str]:
    """The close code and reason a socket closes with for a runtime error."""
    return error.close_code, str(error)
