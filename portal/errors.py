"""The one JSON error shape of the public API: {"error": code, "detail": sentence},
and the one reading of a JSON object a request sends."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from inspect import iscoroutinefunction
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.http.request import RawPostDataException
from django.utils.decorators import sync_and_async_middleware
from django.utils.translation import gettext


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


def _method_refusal_as_json(request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
    """Django's 405 (an empty HTML answer) in the API's one error shape, `Allow` kept."""
    if response.status_code != 405 or not wants_json(request) or isinstance(response, JsonResponse):
        return response
    allowed = response.get("Allow", "")
    answer = json_error(405, "method_not_allowed",
                        gettext("This address takes %(methods)s only.") % {"methods": allowed}
                        if allowed else gettext("This address takes no method."))
    answer["Allow"] = allowed
    return answer


@sync_and_async_middleware
def method_not_allowed_json(
    get_response: Callable[[HttpRequest], HttpResponseBase | Awaitable[HttpResponseBase]],
) -> Callable[[HttpRequest], Any]:
    """Middleware: a method an API address does not take is answered as every other
    API error is, `{"error": "method_not_allowed", "detail": ...}`, with `Allow`."""
    if iscoroutinefunction(get_response):
        async def middleware_async(request: HttpRequest) -> HttpResponseBase:
            response = await get_response(request)
            return _method_refusal_as_json(request, response)
        return middleware_async

    def middleware(request: HttpRequest) -> HttpResponseBase:
        response = get_response(request)
        assert isinstance(response, HttpResponseBase)
        return _method_refusal_as_json(request, response)
    return middleware


def bad_request_answer(request: HttpRequest) -> HttpResponse | None:
    """The API's answer to a request Django refused as bad (a Host it does not serve)."""
    if not wants_json(request):
        return None
    return json_error(400, "bad_request", gettext("The request was refused (its Host header is not one "
                                                  "this portal serves, or it was malformed)."))
