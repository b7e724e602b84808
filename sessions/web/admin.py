"""The runtime's side of the admin: visitor sessions, the staff's page of live
visits (with a button that ends one, and the node's warm pool), and the exhibit actions that boot a
machine (preparing a start state).

`portal.admin` registers the exhibits' admin without importing the runtime;
this module adds the prepare actions to it through `exhibit_actions_add`.
"""
from __future__ import annotations

import asyncio
import logging
import threading

from asgiref.sync import sync_to_async
from django.contrib import admin, messages
from django.contrib.auth.views import redirect_to_login
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_protect

from portal.admin import EXHIBIT_PUBLISHED_HOOKS, exhibit_actions_add
from portal.models import Exhibit
from sessions.errors import gettext_noop
from sessions.ids import session_id_valid
from sessions.machines.launcher import exhibit_picture, exhibit_prepare
from sessions.machines.prepare import PrepareError, StartCondition
from sessions.models import VisitorSession
from sessions.node.broker import NodeUnreachableError, get_broker

logger = logging.getLogger(__name__)

STAFF_END_DETAIL = gettext_noop("The portal's staff ended this visit.")

PREPARE_DESKTOP = StartCondition(wait_graphics=True, still_s=2.0)
PREPARE_DOS_PROMPT = StartCondition(wait_text=":\\>", still_s=1.0)


@admin.register(VisitorSession)
class VisitorSessionAdmin(admin.ModelAdmin):
    list_display = ("id", "exhibit", "state", "ended_reason", "accelerator", "created_at")
    list_filter = ("state", "ended_reason")
    readonly_fields = [field.name for field in VisitorSession._meta.fields]
    change_list_template = "admin/visits/visitorsession/change_list.html"

    def has_add_permission(self, request: object) -> bool:
        return False

    def get_urls(self) -> list[URLPattern]:
        # Async views, not the admin's sync wrapper: ending a visit waits for the
        # runtime, whose database calls need the thread a sync view would hold.
        return [
            path("live/", never_cache(csrf_protect(self.live_view)), name="visits_visitorsession_live"),
            path("live/<str:session_id>/end/", never_cache(csrf_protect(self.end_view)),
                 name="visits_visitorsession_end"),
            *super().get_urls(),
        ]

    async def _staff_refusal(self, request: HttpRequest, *, change: bool) -> HttpResponse | None:
        """What the admin answers someone who may not see (or end) live visits, or None."""
        user = await request.auser()
        if not (user.is_active and user.is_staff):
            return redirect_to_login(request.get_full_path(), reverse("admin:login"))
        allowed = self.has_change_permission if change else self.has_view_permission
        if not await sync_to_async(allowed)(request):
            return HttpResponse(status=403)
        return None

    async def live_view(self, request: HttpRequest) -> HttpResponse:
        """Every node's live visits: exhibit, node, state, age, idle time, and End."""
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        refusal = await self._staff_refusal(request, change=False)
        if refusal is not None:
            return refusal
        broker = await get_broker()
        visits = await broker.visits_live()
        context = {**await sync_to_async(self.admin_site.each_context)(request), "title": "Live visits",
                   "opts": self.model._meta, "visits": visits,
                   "pool": broker.pool.describe(), "node": broker.config.install,
                   "can_end": await sync_to_async(self.has_change_permission)(request)}
        return TemplateResponse(request, "admin/visits/visitorsession/live.html", context)

    async def end_view(self, request: HttpRequest, session_id: str) -> HttpResponse:
        """End one visit (reason `server`): its visitor's page says so. A visit another
        node holds is ended there, through the broker."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        refusal = await self._staff_refusal(request, change=True)
        if refusal is not None:
            return refusal
        live = reverse("admin:visits_visitorsession_live")
        if not session_id_valid(session_id):
            messages.error(request, "There is no such visit.")
            return HttpResponseRedirect(live)
        session = await VisitorSession.objects.filter(id=session_id).select_related("exhibit").afirst()
        if session is None or not session.is_live:
            messages.warning(request, "That visit had ended already.")
            return HttpResponseRedirect(live)
        user = await request.auser()
        logger.info("%s ends session %s (%s) on node %s", user, session.id, session.exhibit.slug,
                    session.node)
        try:
            await (await get_broker()).session_end(
                session_id=session.id, reason=VisitorSession.EndedReason.SERVER, detail=STAFF_END_DETAIL)
        except NodeUnreachableError:
            messages.error(request, f"The node {session.node} did not answer; the visit ends once it "
                                    "is counted dead, or try again.")
            return HttpResponseRedirect(live)
        messages.success(request, f"Ended the visit of {session.exhibit.title} on {session.node}; "
                                  "its visitor was told.")
        return HttpResponseRedirect(live)


def _prepare(request: HttpRequest, exhibits: QuerySet[Exhibit], condition: StartCondition) -> None:
    for exhibit in exhibits.select_related("image"):
        try:
            start = asyncio.run(exhibit_prepare(exhibit, condition))
        except PrepareError as error:
            messages.error(request, f"{exhibit.slug}: {error}")
            continue
        messages.success(request, f"{exhibit.slug}: start state prepared in "
                                  f"{start.prepare_seconds:.1f} s ({start.method}).")


@admin.action(description="Prepare start state: boot to the desktop, save once it is still")
def prepare_desktop(modeladmin: admin.ModelAdmin[Exhibit], request: HttpRequest,
                    queryset: QuerySet[Exhibit]) -> None:
    _prepare(request, queryset, PREPARE_DESKTOP)


@admin.action(description="Prepare start state: boot to the DOS prompt, save once it is still")
def prepare_dos_prompt(modeladmin: admin.ModelAdmin[Exhibit], request: HttpRequest,
                       queryset: QuerySet[Exhibit]) -> None:
    _prepare(request, queryset, PREPARE_DOS_PROMPT)


exhibit_actions_add(prepare_desktop, prepare_dos_prompt)


def picture_condition(exhibit: Exhibit) -> StartCondition:
    """When a booting exhibit's screen is worth a thumbnail: a Windows desktop once it is
    drawn and still, anything else once its screen has been still for two seconds."""
    if exhibit.platform == Exhibit.Platform.WINDOWS3:
        return StartCondition(wait_graphics=True, still_s=2.0, timeout_s=90.0)
    return StartCondition(still_s=2.0, timeout_s=60.0)


def _picture_soon(exhibit: Exhibit) -> None:
    """A published exhibit with neither a thumbnail nor a start state: boot it once, in
    the background, for its picture (the admin then shows it, or why there is none)."""
    def take() -> None:
        try:
            asyncio.run(exhibit_picture(exhibit, picture_condition(exhibit)))
        except Exception:
            logger.exception("the thumbnail of %s could not be taken", exhibit.slug)

    threading.Thread(target=take, name=f"thumbnail-{exhibit.slug}", daemon=True).start()


EXHIBIT_PUBLISHED_HOOKS.append(_picture_soon)
