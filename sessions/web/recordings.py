"""Recordings over HTTP: starting and stopping one on a visit, the kept ones' JSON,
their player's page and what it reads, WebM exports, and an exhibit's tour.

Owns: `POST`/`DELETE /api/sessions/<id>/recording` (the visit's owner: staff on
any exhibit, a visitor where the exhibit lets visitors record), `GET
/api/recordings/<id>` (and `DELETE`, for its maker or staff), its index, its
segments (stored gzip members, served as `Content-Encoding: gzip`) and its
sound, `GET /api/recordings/<id>.webm`, the player's page `/recordings/<id>/`,
and `POST /api/exhibits/<slug>/tour` (staff). A recording is reached by its id
alone, which only its maker's link carries; a damaged file is refused (409),
never served.

Must not: make or read recordings itself (sessions.node.recordings and
sessions.display.recording do).
"""
from __future__ import annotations

import asyncio
import re
from typing import Any

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils.translation import gettext
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.errors import json_error, json_object
from portal.framing import embed_requested, embeddable
from portal.models import Exhibit, Recording
from portal.visitor import visitor_id
from sessions.display.recording import RecordingDamagedError, segment_payload
from sessions.errors import SessionError
from sessions.node.broker import get_broker
from sessions.node.recordings import (
    RecordingDamagedFileError,
    recording_json,
    recording_paths,
)
from sessions.web.api import owned_session
from sessions.web.errors import error_detail, error_response

RECORDING_ID = re.compile(r"[A-Za-z0-9_-]{32}")
BYTE_RANGE = re.compile(r"bytes=(?P<first>\d*)-(?P<last>\d*)")


def _no_recording() -> JsonResponse:
    return json_error(404, "not_found", gettext("There is no such recording."))


async def _recording(recording_id: str) -> Recording | None:
    if not RECORDING_ID.fullmatch(recording_id):
        return None
    return await Recording.objects.select_related("exhibit").filter(pk=recording_id).afirst()


@require_http_methods(["POST", "DELETE"])
async def session_recording(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """Start (POST) or stop (DELETE) recording this browser's visit."""
    session = await owned_session(request, session_id)
    if session is None:
        return json_error(404, "not_found", gettext("There is no such session."))
    user = await request.auser()
    staff = bool(user.is_active and user.is_staff)
    broker = await get_broker()
    try:
        if request.method == "DELETE":
            return JsonResponse(await broker.recordings.stop(session_id=session.id))
        if not (staff or session.exhibit.visitors_may_record):
            return json_error(403, "recording_not_allowed",
                              gettext("Visitors may not record this exhibit."))
        started = await broker.recordings.start(session_id=session.id, owner=session.owner,
                                                by_staff=staff)
    except SessionError as error:
        return error_response(error)
    return JsonResponse(started, status=201)


@require_http_methods(["GET", "DELETE"])
async def recording_detail(request: HttpRequest, recording_id: str) -> HttpResponseBase:
    row = await _recording(recording_id)
    if row is None:
        return _no_recording()
    if request.method == "DELETE":
        user = await request.auser()
        maker = await visitor_id(request.session, create=False)
        if not ((user.is_active and user.is_staff) or (maker is not None and maker == row.owner)):
            return json_error(403, "forbidden", gettext("Only the recording's maker may delete it."))
        for path in recording_paths((await get_broker()).recordings.config.store, row.id):
            path.unlink(missing_ok=True)
        await row.adelete()
        return HttpResponse(status=204)
    if row.state == Recording.State.KEPT:
        try:
            await (await get_broker()).recordings.index(row)
        except SessionError as error:
            return error_response(error)
    return JsonResponse(recording_json(row), headers={"Cache-Control": "no-store"})


async def _kept(recording_id: str) -> tuple[Recording, Any] | JsonResponse:
    """The kept recording and its checked index, or the error response."""
    row = await _recording(recording_id)
    if row is None or row.state != Recording.State.KEPT:
        return _no_recording()
    try:
        index = await (await get_broker()).recordings.index(row)
    except SessionError as error:
        return error_response(error)
    return row, index


@require_GET
async def recording_index(request: HttpRequest, recording_id: str) -> HttpResponseBase:
    """Where each segment starts (a full picture) and the display's size there: what the player seeks by."""
    kept = await _kept(recording_id)
    if isinstance(kept, JsonResponse):
        return kept
    row, index = kept
    return JsonResponse({**index.as_json(), "id": row.id, "exhibit": row.exhibit.slug,
                         "sound": f"/api/recordings/{row.id}/sound.ogg" if row.sound else None},
                        headers={"Cache-Control": "private, max-age=3600"})


@require_GET
async def recording_segment(request: HttpRequest, recording_id: str, number: int) -> HttpResponseBase:
    """One segment's records, as stored: a gzip member the browser inflates."""
    kept = await _kept(recording_id)
    if isinstance(kept, JsonResponse):
        return kept
    row, index = kept
    if not 0 <= number < len(index.segments):
        return json_error(404, "not_found", gettext("There is no such part of the recording."))
    store = (await get_broker()).recordings.config.store
    try:
        payload = segment_payload(recording_paths(store, row.id)[0], index.segments[number])
    except (RecordingDamagedError, OSError):
        return error_response(RecordingDamagedFileError())
    response = HttpResponse(payload, content_type="application/octet-stream")
    response["Content-Encoding"] = "gzip"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
async def recording_sound(request: HttpRequest, recording_id: str) -> HttpResponseBase:
    kept = await _kept(recording_id)
    if isinstance(kept, JsonResponse):
        return kept
    row, _index = kept
    store = (await get_broker()).recordings.config.store
    try:
        sound = await asyncio.to_thread(recording_paths(store, row.id)[1].read_bytes)
    except FileNotFoundError:
        return _no_recording()
    # A range of it (the player's <audio> seeks by asking for one), or the whole.
    wanted = BYTE_RANGE.fullmatch(request.headers.get("Range", ""))
    if wanted and sound:
        first = int(wanted["first"]) if wanted["first"] else max(0, len(sound) - int(wanted["last"] or 0))
        last = min(len(sound) - 1, int(wanted["last"])) if wanted["first"] and wanted["last"] \
            else len(sound) - 1
        if first >= len(sound) or first > last:
            response = HttpResponse(status=416)
            response["Content-Range"] = f"bytes */{len(sound)}"
            return response
        response = HttpResponse(sound[first:last + 1], status=206, content_type="audio/ogg")
        response["Content-Range"] = f"bytes {first}-{last}/{len(sound)}"
    else:
        response = HttpResponse(sound, content_type="audio/ogg")
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_GET
async def recording_video(request: HttpRequest, recording_id: str) -> HttpResponseBase:
    """The WebM once made; until then `202` with the export's state (asking starts it)."""
    kept = await _kept(recording_id)
    if isinstance(kept, JsonResponse):
        return kept
    row, _index = kept
    broker = await get_broker()
    if row.export_state == Recording.Export.DONE:
        try:
            handle = recording_paths(broker.recordings.config.store, row.id)[2].open("rb")
        except FileNotFoundError:
            row.export_state = Recording.Export.NONE
        else:
            name = re.sub(r"[^A-Za-z0-9_-]", "", row.exhibit.slug) or "recording"
            return FileResponse(handle, content_type="video/webm", as_attachment=True,
                                filename=f"{name}-{row.id[:6]}.webm")
    if row.export_state == Recording.Export.FAILED and request.GET.get("retry") != "1":
        return json_error(500, "export_failed", gettext("The video could not be made."),
                          export=recording_json(row)["export"])
    try:
        # Started if it is not being made (or was abandoned by a node that died).
        await broker.recordings.export_start(row)
    except SessionError as error:
        return error_response(error)
    return JsonResponse({"export": recording_json(row)["export"],
                         "detail": gettext("The video is being made; ask again in a moment.")},
                        status=202, headers={"Retry-After": "2", "Cache-Control": "no-store"})


@require_GET
@ensure_csrf_cookie
async def recording_page(request: HttpRequest, recording_id: str) -> HttpResponse:
    row = await _recording(recording_id)
    if row is None or row.state == Recording.State.RECORDING:
        raise Http404("There is no such recording.")
    problem = ""
    try:
        await (await get_broker()).recordings.index(row)
    except SessionError as error:
        problem = error_detail(error)
    user = await request.auser()
    embed = embed_requested(request)
    response = render(request, "portal/recording.html", {
        "recording": row, "exhibit": row.exhibit, "problem": problem, "embed": embed,
        "staff": user.is_active and user.is_staff,
        "player": {"index": f"/api/recordings/{row.id}/index", "id": row.id},
    }, status=409 if problem else 200)
    return embeddable(response) if embed else response


@require_POST
async def exhibit_tour(request: HttpRequest, slug: str) -> HttpResponseBase:
    """Staff: publish a kept recording (`{"recording": id}`) as the exhibit's tour, or none (null)."""
    user = await request.auser()
    exhibit = await Exhibit.objects.filter(slug=slug).afirst()
    if exhibit is None or not (user.is_active and user.is_staff):
        return json_error(404, "not_found", gettext("There is no such exhibit."))
    body = json_object(request)
    if body is None or "recording" not in body:
        return json_error(400, "bad_request", gettext('Send {"recording": its id, or null}.'))
    chosen = body["recording"]
    row = None
    if chosen is not None:
        row = await _recording(str(chosen))
        if row is None or row.exhibit_id != exhibit.pk:
            return json_error(404, "not_found", gettext("There is no such recording of this exhibit."))
        try:
            await (await get_broker()).recordings.index(row)
        except SessionError as error:
            return error_response(error)
        # A tour is kept until a curator deletes it, whoever made it.
        await Recording.objects.filter(pk=row.pk).aupdate(expires_at=None)
    await Exhibit.objects.filter(pk=exhibit.pk).aupdate(tour=row)
    return JsonResponse({"tour": row.url if row is not None else None})
