"""The visitor-session API and the live machine page.

Thin: validate, one broker call, respond. Broker errors are translated into
HTTP statuses here and nowhere else. Another browser's session is reported as
not found, exactly like one that never existed.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile, UploadedFile
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.http.response import HttpResponseBase
from django.template.loader import render_to_string
from django.utils.translation import gettext
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.errors import json_error, json_object
from portal.framing import EMBED_FLAG, embed_requested, embeddable
from portal.images import Derivation, DerivationError
from portal.importer import ImageError
from portal.limits import visit_limits_sentence
from portal.models import Exhibit, ExhibitVersion
from portal.record import agent_staff
from portal.versions import exhibit_as_version, exhibit_of_visit, version_record
from portal.visitor import visitor_id
from sessions.errors import SaveTooLargeError, SessionError, gettext_noop
from sessions.ids import session_id_valid
from sessions.machines.drives import BoxDisk, disk_id_parse
from sessions.machines.sandbox import (
    Upload,
)
from sessions.models import VisitorSession
from sessions.node.broker import Broker, get_broker
from sessions.node.thumbnail import thumbnail_take_soon
from sessions.web.errors import error_response
from sessions.web.representation import session_json


async def owned_session(request: HttpRequest, session_id: str) -> VisitorSession | None:
    """The session if it exists and belongs to this browser, else None."""
    if not session_id_valid(session_id):
        return None
    owner = await visitor_id(request.session, create=False)
    if owner is None:
        return None
    return await VisitorSession.objects.select_related("exhibit").filter(
        id=session_id, owner=owner
    ).afirst()


logger = logging.getLogger(__name__)


def _not_found() -> JsonResponse:
    return json_error(404, "not_found", gettext("There is no such session."))


@require_POST
async def session_create(request: HttpRequest, slug: str) -> HttpResponse:
    """A new session (201 and its JSON). The exhibit page's Start button is also a
    plain form: a post that accepts HTML (sent before the page's script ran, or
    without it) is redirected to the machine's page, or shown the exhibit page
    again with the refusal's sentence."""
    exhibit = await Exhibit.objects.select_related("image").filter(
        slug=slug, published=True
    ).afirst()
    if exhibit is None:
        return json_error(404, "not_found", gettext("There is no such exhibit."))
    return await _start_answer(request, exhibit)


@require_POST
async def session_version_create(request: HttpRequest, slug: str, version: str) -> HttpResponse:
    """A new session of a cited version of the exhibit: its machine as that version had
    it (booting cold unless it is the current one), while the masters it needs exist."""
    exhibit = await Exhibit.objects.select_related("image").filter(slug=slug, published=True).afirst()
    cited = None if exhibit is None else \
        await ExhibitVersion.objects.filter(exhibit=exhibit, version=version).afirst()
    if exhibit is None or cited is None:
        return json_error(404, "not_found", gettext("There is no such version of this exhibit."))
    if not exhibit.version:
        await sync_to_async(version_record)(exhibit.pk)
        exhibit.version = (await Exhibit.objects.aget(pk=exhibit.pk)).version
    machine = await sync_to_async(exhibit_as_version)(exhibit, cited)
    if machine is None:
        return json_error(410, "version_withdrawn", gettext(
            "This version of the exhibit was withdrawn: a disk image it needs is no longer kept."))
    return await _start_answer(request, machine)


async def _start_answer(request: HttpRequest, exhibit: Exhibit) -> HttpResponse:
    """Start a session of the exhibit and answer as session_create does."""
    started = await _session_start(request, exhibit)
    if _wants_page(request):
        # The embed page's form says so: its machine stays chrome-less and frameable.
        embed = request.POST.get(EMBED_FLAG) == "1"
        if isinstance(started, JsonResponse):
            return await _refused_page(request, exhibit, started, embed=embed)
        return HttpResponseRedirect(f"/sessions/{started[0].id}/" + ("?embed=1" if embed else ""),
                                    status=303)
    if isinstance(started, JsonResponse):
        return started
    session, broker = started
    data = await session_json(session, broker)
    if request.GET.get(PAGE_FLAG) == "1":
        # The exhibit page's Start (exhibit.js) turns that page into the machine's in
        # place: the page comes with the answer, so nothing is fetched after it.
        data["page_html"] = await _session_page_html(request, session, data, embed=embed_requested(request))
    return JsonResponse(data, status=201)


# `?page=1` on a start: the answer carries the machine's page (docs/api.md).
PAGE_FLAG = "page"


def _wants_page(request: HttpRequest) -> bool:
    return "text/html" in request.headers.get("Accept", "")


async def _refused_page(request: HttpRequest, exhibit: Exhibit, refused: JsonResponse, *,
                        embed: bool) -> HttpResponse:
    """The exhibit page (or its embed page) again, saying why Start was refused
    (with the same status)."""
    from portal.views import exhibit_page_response

    data = json.loads(refused.content)
    link = data.get("page_url", "") if data.get("error") == "session_exists" else ""
    if link and embed:
        link += "?embed=1"
    return await exhibit_page_response(request, exhibit, message=data["detail"], link=link,
                                       status=refused.status_code, embed=embed)


@require_POST
async def session_preview(request: HttpRequest, slug: str) -> HttpResponse:
    """A curator's preview of any exhibit, drafts included; a thumbnail is taken from it.

    Staff only; to anyone else a draft does not exist. A browser's form post (the
    admin's Preview button, which accepts HTML) is redirected to the live page.
    """
    user = await request.auser()
    exhibit = await Exhibit.objects.select_related("image").filter(slug=slug).afirst()
    if exhibit is None or not (user.is_active and user.is_staff):
        return json_error(404, "not_found", gettext("There is no such exhibit."))
    started = await _session_start(request, exhibit)
    if isinstance(started, JsonResponse):
        return started
    session, broker = started
    thumbnail_take_soon(broker, session_id=session.id, exhibit=exhibit)
    data = await session_json(session, broker)
    if "text/html" in request.headers.get("Accept", ""):
        return HttpResponseRedirect(data["page_url"])
    return JsonResponse(data, status=201)


async def _visit_exhibit(session: VisitorSession) -> Exhibit:
    """The exhibit as the visit runs it (a cited version's machine where it is one)."""
    exhibit = await Exhibit.objects.select_related("image").aget(pk=session.exhibit_id)
    return await sync_to_async(exhibit_of_visit)(exhibit, session.cited_version)


async def _session_start(
    request: HttpRequest, exhibit: Exhibit
) -> tuple[VisitorSession, Broker] | JsonResponse:
    """The new session (and the broker that owns it), or the error response. A
    multipart form with a file in `visit` resumes a saved visit from it."""
    saved = await _saved_upload(request)
    if isinstance(saved, JsonResponse):
        return saved
    owner = await visitor_id(request.session, create=True)
    assert owner is not None
    broker = await get_broker()
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        if saved is None:
            session = await broker.session_create(exhibit=exhibit, owner=owner, address=address)
        else:
            with contextlib.ExitStack() as held:
                session = await broker.session_resume(exhibit=exhibit, owner=owner, address=address,
                                                      upload=await _on_disk(saved, held),
                                                      size=int(saved.size or 0))
    except SessionError as error:
        return error_response(error)
    session.exhibit = exhibit
    return session, broker


async def _saved_upload(request: HttpRequest) -> UploadedFile | JsonResponse | None:
    """The saved visit a start was sent with (multipart, field `visit`), None for a
    plain start, or the refusal of a file over the saves' size limit (the server let
    the body through with its form's envelope)."""
    if not (request.content_type or "").startswith("multipart/"):
        return None
    # The CSRF check has parsed the form already; the file is on disk.
    files = await sync_to_async(lambda: request.FILES.getlist("visit"))()
    if not files:
        if getattr(request, "upload_too_large", False):
            return error_response(SaveTooLargeError(settings.PORTAL_SAVE_MAX_BYTES))
        if request.POST.get("resume") == "1":
            return json_error(400, "bad_save", gettext("Choose the saved visit's file (.visit) first."))
        return None
    upload = files[0]
    if int(upload.size or 0) > settings.PORTAL_SAVE_MAX_BYTES:
        upload.close()
        return error_response(SaveTooLargeError(settings.PORTAL_SAVE_MAX_BYTES))
    return upload


@require_POST
async def session_save(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """Save to my computer: the visit as a file, made as it downloads."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponseBase:
        download = await broker.saves.visit_save(session_id=session.id)
        response = StreamingHttpResponse(download.chunks, content_type="application/octet-stream")
        response["Content-Disposition"] = f'attachment; filename="{download.filename}"'
        response["Cache-Control"] = "no-store"
        return response

    return await _sandbox_call(request, session_id, act)


@require_http_methods(["GET", "DELETE"])
async def session_detail(request: HttpRequest, session_id: str) -> HttpResponse:
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    if request.method == "DELETE":
        broker = await get_broker()
        try:
            await broker.session_end(session_id=session.id, reason=VisitorSession.EndedReason.VISITOR,
                                     detail=gettext_noop("The visitor ended the session."))
        except SessionError as error:
            return error_response(error)
        return HttpResponse(status=204)
    return JsonResponse(await session_json(session, await get_broker()))


@require_POST
async def session_reset(request: HttpRequest, session_id: str) -> JsonResponse:
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    exhibit = await _visit_exhibit(session)
    broker = await get_broker()
    try:
        await broker.session_reset(session_id=session.id, exhibit=exhibit)
    except SessionError as error:
        return error_response(error)
    session = await VisitorSession.objects.select_related("exhibit").aget(id=session.id)
    return JsonResponse(await session_json(session, broker))


@require_POST
async def session_save_master(request: HttpRequest, session_id: str) -> HttpResponse:
    """Staff only: the visit's disk becomes a new master over its exhibit's (a layer, or
    flattened) with a new draft exhibit on it. JSON in and out, or the session page's
    form (then a redirect to the new exhibit in the admin)."""
    user = await request.auser()
    session = await owned_session(request, session_id)
    if session is None or not (user.is_active and user.is_staff):
        return _not_found()
    fields = _form_or_json(request)
    if fields is None:
        return json_error(400, "bad_request", gettext("Send a JSON object or a form."))
    slug, title = str(fields.get("slug") or ""), str(fields.get("title") or "")
    flatten = fields.get("flatten") in {True, "true", "on", "1"}
    exhibit = await Exhibit.objects.select_related("image").aget(pk=session.exhibit_id)
    derivation = Derivation(slug=slug or f"{exhibit.slug}-{session.id[:6].lower()}",
                            title=title or f"{exhibit.title} (derivative)", flatten=flatten)
    broker = await get_broker()
    try:
        derived = await broker.session_save_master(
            session_id=session.id, exhibit=exhibit, derivation=derivation,
            agent=agent_staff(user.get_username()))
    except SessionError as error:
        return error_response(error)
    except DerivationError as error:
        return json_error(400, "bad_derivation", str(error))
    except ImageError as error:
        logger.error("session %s: saving a master failed: %s", session.id, error)
        return json_error(500, "derivation_failed", f"The new master could not be made: {error}")
    admin_url = f"/admin/portal/exhibit/{derived.pk}/change/"
    if _wants_page(request):
        return HttpResponseRedirect(admin_url, status=303)
    image = derived.image
    return JsonResponse({"exhibit": {"slug": derived.slug, "title": derived.title, "parent": exhibit.slug},
                         "master": {"sha256": image.sha256, "guest_sha256": image.guest_sha256,
                                    "parent": image.parent_id and exhibit.image.sha256,
                                    "layers": image.layers(), "bytes": image.size_bytes},
                         "admin_url": admin_url}, status=201)


def _form_or_json(request: HttpRequest) -> dict[str, Any] | None:
    if request.content_type == "application/json":
        return json_object(request)
    return dict(request.POST.items())


async def _sandbox_call(request: HttpRequest, session_id: str,
                        act: Callable[[Broker, VisitorSession], Awaitable[HttpResponseBase]]
                        ) -> HttpResponseBase:
    """Run one sandbox request on this browser's live session, its errors answered as the API says."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    broker = await get_broker()
    try:
        return await act(broker, session)
    except SessionError as error:
        return error_response(error)


@require_http_methods(["GET", "POST"])
async def checkpoints(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """GET: the visit's checkpoints, oldest first; POST: save one (`{"label": …}` optional)."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponse:
        if request.method == "GET":
            if not session.is_live:
                return JsonResponse({"checkpoints": []})
            return JsonResponse({"checkpoints": [checkpoint.as_json() for checkpoint
                                                 in broker.sandboxes.checkpoints(session_id=session.id)]})
        label = (json_object(request) or {}).get("label")
        checkpoint = await broker.sandboxes.checkpoint_save(session_id=session.id,
                                                  label=label if isinstance(label, str) else "")
        return JsonResponse(checkpoint.as_json(), status=201)

    return await _sandbox_call(request, session_id, act)


@require_POST
async def checkpoint_restore(request: HttpRequest, session_id: str, checkpoint_id: str) -> HttpResponseBase:
    async def act(broker: Broker, session: VisitorSession) -> HttpResponse:
        await broker.sandboxes.checkpoint_restore(session_id=session.id, checkpoint_id=checkpoint_id)
        row = await VisitorSession.objects.select_related("exhibit").aget(id=session.id)
        return JsonResponse(await session_json(row, broker))

    return await _sandbox_call(request, session_id, act)


@require_http_methods(["DELETE"])
async def checkpoint_detail(request: HttpRequest, session_id: str, checkpoint_id: str) -> HttpResponseBase:
    async def act(broker: Broker, session: VisitorSession) -> HttpResponse:
        await broker.sandboxes.checkpoint_delete(session_id=session.id, checkpoint_id=checkpoint_id)
        return HttpResponse(status=204)

    return await _sandbox_call(request, session_id, act)


@require_POST
async def media(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """The visitor's files (multipart, field `files`) onto a floppy in the machine."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponseBase:
        # The CSRF check has parsed the form already: small files are in memory, larger
        # ones in temporary files (the body is at most a floppy's worth, portal.server).
        files = await sync_to_async(lambda: request.FILES.getlist("files"))()
        with contextlib.ExitStack() as held:
            uploads = [Upload(name=str(upload.name or "FILE"), path=await _on_disk(upload, held),
                              size=int(upload.size or 0)) for upload in files]
            exhibit = await _visit_exhibit(session)
            result = await broker.sandboxes.media_insert(
                session_id=session.id, uploads=uploads, drive=exhibit.machine_profile().files_in)
        return JsonResponse(result.as_json(), status=201)

    return await _sandbox_call(request, session_id, act)


@require_http_methods(["GET"])
async def drives(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """The disk box: each drive and the disk in it, and the disks a visitor may put in."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponse:
        if not session.is_live:
            return JsonResponse({"drives": [], "disks": []})
        return JsonResponse(drives_json(*broker.sandboxes.drives(session_id=session.id)))

    return await _sandbox_call(request, session_id, act)


@require_http_methods(["PUT"])
async def drive_put(request: HttpRequest, session_id: str, drive: str) -> HttpResponseBase:
    """Put a disk of the box into the drive (`{"disk": <id>}`), or take it out (`{"disk": null}`)."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponse:
        body = json_object(request)
        if body is None or "disk" not in body:
            return json_error(400, "bad_request", gettext(
                'Send a JSON object naming the disk: {"disk": <id>}, or {"disk": null} to take it out.'))
        disk = disk_id_parse(body["disk"])
        await broker.sandboxes.drive_put(session_id=session.id, drive=drive, disk=disk)
        return JsonResponse(drives_json(*broker.sandboxes.drives(session_id=session.id)))

    return await _sandbox_call(request, session_id, act)


def drives_json(drives: list[dict[str, Any]], disks: list[BoxDisk]) -> dict[str, Any]:
    """The disk box as the API shows it, the portal's own labels in the visitor's language."""
    listed = []
    for disk in disks:
        shown = disk.as_json()
        if not disk.id.isdigit():
            shown["label"] = gettext(disk.label)
        listed.append(shown)
    return {"drives": drives, "disks": listed}


@require_GET
async def files_zip(request: HttpRequest, session_id: str) -> HttpResponseBase:
    """The files the visit created or changed on the machine's FAT disks, as a zip."""
    async def act(broker: Broker, session: VisitorSession) -> HttpResponseBase:
        archive = await broker.sandboxes.files_out(session_id=session.id)
        name = re.sub(r"[^A-Za-z0-9_-]", "", session.exhibit.slug) or "machine"
        response = FileResponse(archive, content_type="application/zip", as_attachment=True,
                                filename=f"{name}-files.zip")
        response["Cache-Control"] = "no-store"
        return response

    return await _sandbox_call(request, session_id, act)


async def _on_disk(upload: UploadedFile, held: contextlib.ExitStack) -> Path:
    """Where an uploaded file's bytes are on disk (written out if they were in memory)."""
    held.callback(upload.close)
    if isinstance(upload, TemporaryUploadedFile):
        return Path(upload.temporary_file_path())
    # Closed (and so deleted) by the caller's ExitStack, once the floppy is built.
    copy = held.enter_context(tempfile.NamedTemporaryFile(prefix="portal-media-"))  # noqa: SIM115

    def write() -> None:
        for chunk in upload.chunks():
            copy.write(chunk)
        copy.flush()

    await asyncio.to_thread(write)
    return Path(copy.name)


@require_GET
@ensure_csrf_cookie
async def session_page(request: HttpRequest, session_id: str) -> HttpResponse:
    session = await owned_session(request, session_id)
    if session is None:
        raise Http404("There is no such session.")
    embed = embed_requested(request)
    html = await _session_page_html(request, session, await session_json(session, await get_broker()),
                                    embed=embed)
    response = HttpResponse(html)
    return embeddable(response) if embed else response


async def _session_page_html(request: HttpRequest, session: VisitorSession, data: dict[str, Any], *,
                             embed: bool) -> str:
    """The machine's page, as `GET /sessions/<id>/` (or with `?embed=1`) shows it."""
    user = await request.auser()
    drive = session.exhibit.machine_profile().files_in
    staff = user.is_active and user.is_staff
    broker = await get_broker()
    return render_to_string("portal/session.html", {
        "staff": staff,
        # Recording: who may (staff, or visitors where the exhibit allows), and one being made.
        "may_record": staff or session.exhibit.visitors_may_record,
        "recording_now": broker.recordings.recording_status(session_id=session.id),
        "session": session,
        "exhibit": session.exhibit,
        "files_in": None if drive == "off" else drive,
        "session_json": data,
        # Reached from an embed page: chrome-less, and frameable by the embedding sites.
        "embed": embed,
        "limits": visit_limits_sentence(),
        # The page's own address (the language switcher comes back to it), also when
        # the page comes with the start's answer.
        "page_path": data["page_url"] + ("?embed=1" if embed else ""),
    }, request=request)
