"""The one JSON error shape of the public API: {"error": code, "detail": sentence},
and the one reading of a JSON object a request sends."""
from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.http.request import RawPostDataException


def json_error(status: int, error: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail, **extra}, status=status)


def json_object(request: HttpRequest) -> dict[str, Any] | None:
    """The request's body as a JSON object ({} for no body); None when it is not one:
    not JSON, nested deeper than the parser goes, or a form Django has read already."""
    try:
        body = request.body
    except RawPostDataException:
        # A multipart body is read as a form (the CSRF check reads the form), never kept.
        return None
    try:
        data = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def wants_json(request: HttpRequest) -> bool:
    return path_wants_json(request.path)


def path_wants_json(path: str) -> bool:
    return path.startswith("/api/") or path == "/healthz"
