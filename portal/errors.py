"""The one JSON error shape of the public API: {"error": code, "detail": sentence},
and the one reading of a JSON object a request sends."""
from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse


def json_error(status: int, error: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail, **extra}, status=status)


def json_object(request: HttpRequest) -> dict[str, Any] | None:
    """The request's body as a JSON object ({} for no body); None when it is not one."""
    try:
        data = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"
