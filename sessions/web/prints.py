"""The visit's prints over HTTP: the list, each PDF, and a PCL job's raw file.

Owns: `GET /api/sessions/<id>/prints`, `GET /api/sessions/<id>/prints/<pid>.pdf`
and `GET /api/sessions/<id>/prints/<pid>.raw`, for the browser that owns the
visit (another gets 404, as for every visit's route).

Must not: convert or keep prints (sessions.node.prints does).
"""
from __future__ import annotations

import re

from django.http import FileResponse, HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.utils.translation import gettext
from django.views.decorators.http import require_GET

from portal.errors import json_error
from sessions.errors import SessionError
from sessions.node.broker import get_broker
from sessions.web.api import owned_session
from sessions.web.errors import error_response

PRINT_ID = re.compile(r"[0-9a-f]{16}")


@require_GET
async def prints(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """What the visit printed, oldest first (none once it has ended: prints go with it)."""
    session = await owned_session(request, session_id)
    if session is None:
        return json_error(404, "not_found", gettext("There is no such session."))
    if not session.is_live:
        return JsonResponse({"prints": []})
    broker = await get_broker()
    try:
        listed = broker.prints.prints(session_id=session.id)
    except SessionError as error:
        return error_response(error)
    return JsonResponse({"prints": listed}, headers={"Cache-Control": "no-store"})


@require_GET
async def print_file(request: HttpRequest, session_id: str, print_id: str, suffix: str) -> HttpResponseBase:
    """One print as a PDF (`pdf`), or a PCL job as the guest sent it (`raw`)."""
    session = await owned_session(request, session_id)
    if session is None:
        return json_error(404, "not_found", gettext("There is no such session."))
    if not session.is_live or not PRINT_ID.fullmatch(print_id) or suffix not in {"pdf", "raw"}:
        return json_error(404, "not_found", gettext("There is no such print."))
    broker = await get_broker()
    try:
        path = broker.prints.print_path(session_id=session.id, print_id=print_id, suffix=suffix)
        handle = path.open("rb")
    except SessionError as error:
        return error_response(error)
    except FileNotFoundError:
        return json_error(404, "not_found", gettext("There is no such print."))
    name = re.sub(r"[^A-Za-z0-9_-]", "", session.exhibit.slug) or "machine"
    if suffix == "pdf":
        response = FileResponse(handle, content_type="application/pdf",
                                filename=f"{name}-print-{print_id[:6]}.pdf")
    else:
        response = FileResponse(handle, content_type="application/octet-stream", as_attachment=True,
                                filename=f"{name}-print-{print_id[:6]}.pcl")
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response
