"""The catalogue's public face: exhibit pages and the exhibits API.

Thin: validate, one call, respond.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.shortcuts import render
from django.utils import translation
from django.utils.html import escape
from django.utils.translation import gettext
from django.views import defaults
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import last_modified, require_GET, require_POST
from django.views.i18n import JavaScriptCatalog, set_language

from .errors import bad_request_answer, json_error, wants_json
from .framing import embeddable
from .front import gallery_context, json_ld, share_tags, thumbnail_url
from .limits import visit_limits_sentence
from .models import Exhibit, ExhibitDisk, ExhibitVersion
from .runtime import Runtime, runtime
from .versions import changes, citation, exhibit_as_version, public_url, version_record, version_url


async def exhibit_json(exhibit: Exhibit, request: HttpRequest, *, here: Runtime) -> dict[str, Any]:
    version = await current_version(exhibit)
    return {
        "slug": exhibit.slug,
        # In the visitor's language where the curators gave one, else the original.
        "title": exhibit.shown_title,
        "year": exhibit.year,
        "publisher": exhibit.publisher,
        "description": exhibit.shown_description,
        # An extension: the language the title is in (a code such as "en").
        "language": exhibit.shown_title_language,
        "url": request.build_absolute_uri(f"/exhibits/{exhibit.slug}/"),
        "machine": {
            "cpu": exhibit.cpu,
            "memory_mb": exhibit.memory_mb,
            "accelerator": here.accelerator_for(exhibit),
            "boot": exhibit.boot,
            "sound": list(exhibit.machine_profile().sound),
            "speed": exhibit.speed,
            # The DOS code page the screen as text is read in.
            "code_page": exhibit.code_page,
            "keyboard": exhibit.keyboard,
            # LPT1's printer: "text" (Epson ESC/P), "postscript" or "pcl".
            "printer": exhibit.printer,
        },
        # The floppy drive ("a" or "b") visitors' own files go into, or null when off.
        "files_in": None if (drive := exhibit.machine_profile().files_in) == "off" else drive,
        "instant_start": await here.start_state_usable(exhibit) is not None,
        # The disk set: what a visitor may put into the machine's drives.
        "disks": [disk.as_json() async for disk in ExhibitDisk.objects.filter(exhibit_id=exhibit.pk)],
        # A kept recording shown on the exhibit's page and to visitors in line, or null.
        "tour": f"/recordings/{exhibit.tour_id}/" if exhibit.tour_id else None,
        "visitors_may_record": exhibit.visitors_may_record,
        "thumbnail": thumbnail_url(exhibit.thumbnail) or None,
        # An extension: the gallery's smaller copy of the same picture.
        "thumbnail_small": thumbnail_url(exhibit.thumbnail_small) or None,
        "platform": exhibit.platform,
        "rights": exhibit.rights,
        "version": version,
        "citation": citation(exhibit, version),
    }


async def _published(slug: str) -> Exhibit | None:
    return await Exhibit.objects.select_related("image").filter(slug=slug, published=True).afirst()


@require_GET
async def api_exhibit_list(request: HttpRequest) -> JsonResponse:
    here = await runtime()
    exhibits = [
        await exhibit_json(exhibit, request, here=here)
        async for exhibit in Exhibit.objects.select_related("image").filter(published=True)
    ]
    return JsonResponse({"exhibits": exhibits})


@require_GET
async def api_exhibit_detail(request: HttpRequest, slug: str) -> JsonResponse:
    exhibit = await _published(slug)
    if exhibit is None:
        return json_error(404, "not_found", gettext("There is no such exhibit."))
    here = await runtime()
    return JsonResponse(await exhibit_json(exhibit, request, here=here))


@require_GET
@ensure_csrf_cookie
async def api_csrf(request: HttpRequest) -> HttpResponse:
    return HttpResponse(status=204)


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse(await (await runtime()).health())


@require_GET
def exhibit_list_page(request: HttpRequest) -> HttpResponse:
    """The gallery: every published exhibit's picture, title, year, publisher and machine,
    filtered (q, decade, platform), sorted (sort) and in pages (page), all without scripts."""
    return render(request, "portal/exhibit_list.html", gallery_context(request))


async def current_version(exhibit: Exhibit) -> str:
    """The exhibit's version id (recorded now for one saved before versions were)."""
    if not exhibit.version:
        exhibit.version = await sync_to_async(version_record)(exhibit.pk) or ""
    return exhibit.version


@require_GET
@ensure_csrf_cookie
async def exhibit_version_page(request: HttpRequest, slug: str, version: str) -> HttpResponse:
    """A cited version of the exhibit: its machine as it was, whether a newer version
    exists and what changed, or that it was withdrawn."""
    exhibit = await _published(slug)
    if exhibit is None:
        raise Http404(gettext("There is no such exhibit."))
    cited = await ExhibitVersion.objects.filter(exhibit=exhibit, version=version).afirst()
    if cited is None:
        raise Http404(gettext("This exhibit has no such version."))
    return await exhibit_page_response(request, exhibit, cited=cited)


@require_GET
@ensure_csrf_cookie
async def exhibit_page(request: HttpRequest, slug: str) -> HttpResponse:
    exhibit = await _published(slug)
    if exhibit is None:
        raise Http404(gettext("There is no such exhibit."))
    return await exhibit_page_response(request, exhibit)


@require_GET
@ensure_csrf_cookie
async def exhibit_embed_page(request: HttpRequest, slug: str) -> HttpResponse:
    """The exhibit for another site's iframe: no header or footer, a Start
    button, then the machine in the same frame."""
    exhibit = await _published(slug)
    if exhibit is None:
        raise Http404(gettext("There is no such exhibit."))
    return await exhibit_page_response(request, exhibit, embed=True)


async def exhibit_page_response(request: HttpRequest, exhibit: Exhibit, *, message: str = "",
                                link: str = "", status: int = 200, embed: bool = False,
                                cited: ExhibitVersion | None = None) -> HttpResponse:
    """The exhibit's page (or, with `embed`, its embed page); with `message` (and
    a `link` to follow) when a Start posted without the page's script was refused;
    with `cited`, the page of that version of it."""
    here = await runtime()
    embed_url = request.build_absolute_uri(f"/exhibits/{exhibit.slug}/embed")
    current = await current_version(exhibit)
    front = await sync_to_async(_front_door)(exhibit, current, cited)
    shown = front["shown"]
    problem = await exhibit.fixity_problem()
    unavailable = gettext(problem) if problem else front["withdrawn"] or None
    response = render(
        request, "portal/embed.html" if embed else "portal/exhibit_detail.html",
        {"exhibit": shown, **front, "accelerator": here.accelerator_for(shown),
         "instant_start": await here.start_state_usable(shown) is not None,
         "unavailable": unavailable,
         "message": message, "message_link": link,
         "embed_url": embed_url, "embed_snippet": embed_snippet(exhibit, embed_url),
         "embed_sites": settings.PORTAL_EMBED_ORIGINS, "limits": visit_limits_sentence()},
        status=status,
    )
    if embed:
        embeddable(response)
    return response


def _front_door(exhibit: Exhibit, current: str, cited: ExhibitVersion | None) -> dict[str, Any]:
    """What an exhibit's page tells the web and those who cite it: its JSON-LD, share
    tags, canonical address, citation, and for a cited version whether it is current,
    what changed since, or that it was withdrawn."""
    version = cited.version if cited is not None else current
    canonical = public_url(f"/exhibits/{exhibit.slug}/")
    shown = exhibit
    withdrawn, changed = "", []
    if cited is not None:
        as_cited = exhibit_as_version(exhibit, cited)
        if as_cited is None:
            withdrawn = gettext("This version of the exhibit was withdrawn: a disk image it needs is no "
                                "longer kept.")
        else:
            shown = as_cited
        if version != current:
            now = ExhibitVersion.objects.filter(exhibit=exhibit, version=current).first()
            changed = changes(cited.configuration, now.configuration if now else {})
    cited_as = citation(exhibit, version)
    return {
        "shown": shown, "version": version, "current_version": current, "cited": cited,
        "withdrawn": withdrawn, "changed": changed,
        "start_url": (f"/api/exhibits/{exhibit.slug}/v/{version}/sessions" if cited is not None
                      else f"/api/exhibits/{exhibit.slug}/sessions"),
        "version_url": version_url(exhibit, version), "current_url": canonical,
        # The version's own master is the one its identifier names.
        "json_ld": json_ld(shown, canonical=canonical, version=version),
        "share": share_tags(exhibit, canonical=canonical),
        "citation": cited_as,
        "citation_csl": json.dumps(cited_as["csl"], ensure_ascii=False, indent=2),
    }


def embed_snippet(exhibit: Exhibit, embed_url: str) -> str:
    """The HTML a site pastes to show the exhibit in an iframe (escaped by the template)."""
    return (f'<iframe src="{escape(embed_url)}" title="{escape(exhibit.title)}" width="800" height="640" '
            'style="border:0; max-width:100%" allow="fullscreen; clipboard-read; clipboard-write; autoplay" '
            'allowfullscreen></iframe>')


@require_GET
@last_modified(lambda request, language: _catalogue_changed(language))
def script_catalogue(request: HttpRequest, language: str) -> HttpResponseBase:
    """The page scripts' catalogue (gettext, ngettext, interpolate) in one language:
    its address names the language, so browsers and caches may keep it (an hour,
    then a conditional request that the catalogue's file date answers)."""
    if language not in dict(settings.LANGUAGES):
        raise Http404(gettext("There is no such language."))
    with translation.override(language):
        response = JavaScriptCatalog.as_view(packages=["portal"])(request)
    response["Cache-Control"] = "public, max-age=3600"
    # The catalogue's language, not the visitor's (which LocaleMiddleware would name).
    response["Content-Language"] = language
    return response


@require_POST
def language_choose(request: HttpRequest) -> HttpResponseBase:
    """The language switcher's form: Django's set_language (the language cookie, then
    back to `next`, a path on this portal)."""
    return set_language(request)


def _catalogue_changed(language: str) -> datetime | None:
    compiled = Path(settings.LOCALE_PATHS[0]) / language / "LC_MESSAGES" / "djangojs.mo"
    try:
        return datetime.fromtimestamp(compiled.stat().st_mtime, tz=UTC)
    except OSError:
        return None


THUMBNAIL_NAME = re.compile(r"[0-9a-f]{64}\.png")


@require_GET
def thumbnail(request: HttpRequest, name: str) -> FileResponse:
    """A thumbnail by its content address: it never changes, so caches may keep it."""
    if not THUMBNAIL_NAME.fullmatch(name):
        raise Http404("There is no such picture.")
    try:
        handle = (settings.PORTAL_THUMBNAIL_DIR / name).open("rb")
    except FileNotFoundError:
        raise Http404("There is no such picture.") from None
    response = FileResponse(handle, content_type="image/png")
    response["Cache-Control"] = "public, max-age=31536000, immutable"
    return response


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if wants_json(request):
        return json_error(404, "not_found", gettext("Nothing is here."))
    return render(request, "portal/error.html", {"title": gettext("Not found"),
                  "message": gettext("There is nothing at this address.")}, status=404)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    answer = bad_request_answer(request)
    if answer is not None:
        return answer
    # Django's own page: it asks nothing of the request (whose Host may be the problem).
    return defaults.bad_request(request, exception or Exception())


def server_error(request: HttpRequest) -> HttpResponse:
    if wants_json(request):
        return json_error(500, "server_error", gettext("Something went wrong on the server."))
    return render(request, "portal/error.html", {"title": gettext("Server error"),
                  "message": gettext("Something went wrong on our side.")}, status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if wants_json(request):
        return json_error(403, "csrf_failed",
                          gettext("Send the csrftoken cookie's value in the X-CSRFToken header."))
    return render(request, "portal/error.html", {"title": gettext("Forbidden"),
                  "message": gettext("The form was stale; reload the page.")}, status=403)
