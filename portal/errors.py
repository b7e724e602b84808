"""The one JSON error shape of the public API: {"error": code, "detail": sentence}."""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse


def json_error(status: int, error: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse({"error": error, "detail": detail, **extra}, status=status)


def wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"
