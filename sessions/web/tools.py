"""The visitor's tools over HTTP: typing, the screenshot, the screen as text, watch
links and their page.

Thin, as the rest of the API (`sessions.web.api`): validate, one broker call,
respond, with the broker's errors translated here. Typing, the screenshot and
the links are the owner's (another browser gets 404, as for everything about a
visit); the watch page and its state are anyone's who holds the link.

Must not: type, read the screen or close sockets itself (the broker and keeper
do), or show a watcher anything but the machine's picture and its state.
"""
from __future__ import annotations

import re
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from portal.errors import json_error, json_object
from portal.models import Exhibit
from sessions.display.layouts import Layout, code_page_number, layout_for
from sessions.errors import SessionEndedError, SessionError, SessionQueuedError, gettext_noop
from sessions.machines.keys import KeysError, Keystroke, combo_keystroke, text_keystrokes
from sessions.models import VisitorSession
from sessions.node.broker import get_broker
from sessions.placement.watch import watch_session
from sessions.web.api import owned_session
from sessions.web.errors import error_response
from sessions.web.representation import session_json


def _not_found() -> JsonResponse:
    return json_error(404, "not_found", gettext("There is no such session."))


def exhibit_layout(exhibit: Exhibit) -> Layout:
    """The guest's keyboard layout, for the DOS code page the exhibit names (437 where
    it names none)."""
    return layout_for(exhibit.keyboard, code_page_number(getattr(exhibit, "code_page", 437)))


def _not_live(session: VisitorSession) -> JsonResponse | None:
    """409 with a sentence when the visit has no machine to use: waiting or ended."""
    if session.state == VisitorSession.State.QUEUED:
        return error_response(SessionQueuedError())
    if not session.is_live:
        return error_response(SessionEndedError())
    return None


@require_POST
async def keys(request: HttpRequest, session_id: str) -> HttpResponse:
    """`{"text": …}` typed as keystrokes (on the guest's layout), or `{"combo": name}` pressed: 204."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    broker = await get_broker()
    data = json_object(request)
    if data is None or len({"text", "combo"} & data.keys()) != 1:
        return json_error(400, "bad_request", gettext(
            'Send a JSON object with either "text" (to type) or "combo" (a key combination).'))
    strokes: list[Keystroke]
    try:
        if "text" in data:
            text = data["text"]
            if not isinstance(text, str) or not text:
                return json_error(400, "bad_request",
                                  gettext('"text" must be a string with something to type.'))
            limit = broker.config.keys_max_chars
            if len(text) > limit:
                return json_error(400, "too_long", gettext(
                    "That is %(count)s characters; at most %(limit)s can be typed at once.")
                    % {"count": len(text), "limit": limit}, limit=limit)
            strokes = text_keystrokes(text, exhibit_layout(session.exhibit))
        else:
            combo = data["combo"]
            if not isinstance(combo, str):
                return json_error(400, "bad_request",
                                  gettext('"combo" must be the name of a key combination.'))
            strokes = [combo_keystroke(combo)]
    except KeysError as error:
        return error_response(error)
    refused = _not_live(session)
    if refused is not None:
        return refused
    try:
        await broker.keys_send(session_id=session.id, strokes=strokes, stored="text" in data)
    except SessionError as error:
        return error_response(error)
    return HttpResponse(status=204)


@require_http_methods(["PUT"])
async def key_mode(request: HttpRequest, session_id: str) -> HttpResponse:
    """`{"key_mode": "characters"|"positions"}`: how the visitor's keys reach the guest
    (what they print, or the physical keys); 200 and the Session."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    data = json_object(request)
    mode = data.get("key_mode") if data is not None else None
    if mode not in VisitorSession.KeyMode.values:
        return json_error(400, "bad_key_mode", gettext(
            'Send {"key_mode": "characters"} (what the visitor\'s keys print arrives) or '
            '{"key_mode": "positions"} (the physical keys arrive).'))
    broker = await get_broker()
    await broker.session_key_mode_set(session_id=session.id, key_mode=str(mode))
    session.key_mode = str(mode)
    return JsonResponse(await session_json(session, broker))


@require_GET
async def screenshot(request: HttpRequest, session_id: str) -> HttpResponse:
    """The guest's screen as a PNG at its own resolution, downloaded as
    `<exhibit>-<date>-<time>.png` (the server's local time)."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    refused = _not_live(session)
    if refused is not None:
        return refused
    try:
        png = await (await get_broker()).screenshot(session_id=session.id)
    except SessionError as error:
        return error_response(error)
    name = re.sub(r"[^A-Za-z0-9_-]", "", session.exhibit.slug) or "machine"
    when = timezone.localtime().strftime("%Y-%m-%d-%H%M")
    response = HttpResponse(png, content_type="image/png")
    response["Content-Disposition"] = f'attachment; filename="{name}-{when}.png"'
    response["Cache-Control"] = "no-store"
    return response


async def _screen_text(session: VisitorSession) -> HttpResponse:
    """The visit's text screen as text/plain with its cursor, or why there is none."""
    refused = _not_live(session)
    if refused is not None:
        return refused
    try:
        screen = await (await get_broker()).screens.text(session_id=session.id)
    except SessionError as error:
        return error_response(error)
    response = HttpResponse(screen.plain(), content_type="text/plain; charset=utf-8")
    column, row = screen.cursor or (0, 0)
    response["X-Cursor"] = f"{column},{row}"
    # An extension: the text mode's size, columns x rows.
    response["X-Screen-Size"] = f"{screen.columns}x{screen.rows}"
    response["Cache-Control"] = "no-store"
    return response


@require_GET
async def screen_text(request: HttpRequest, session_id: str) -> HttpResponse:
    """The guest's text screen, one line per row (`X-Cursor: col,row`); 409 in graphics."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    return await _screen_text(session)


@require_GET
async def watch_screen_text(request: HttpRequest, token: str) -> HttpResponse:
    """The watched visit's text screen, as its owner reads it."""
    session = await watch_session(token)
    if session is None:
        return json_error(404, "not_found", gettext("This watch link was revoked, or never existed."))
    return await _screen_text(session)


@require_http_methods(["GET", "POST", "DELETE"])
async def watchers(request: HttpRequest, session_id: str) -> HttpResponse:
    """POST: a new watch link (201 `{"watch_url", "token"}`); DELETE: revoke every
    link and close every watcher (204); GET (an extension): how many watch now."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    broker = await get_broker()
    if request.method == "DELETE":
        await broker.watch_links_revoke(session_id=session.id)
        return HttpResponse(status=204)
    if request.method == "GET":
        names, control = broker.viewers.watchers(session.id)
        return JsonResponse({"watchers": len(names), "names": names, "control": control})
    if not session.is_live:
        return error_response(SessionEndedError(
            gettext_noop("This machine has ended; there is nothing to watch.")))
    try:
        token = await broker.watch_link_create(session_id=session.id)
    except SessionError as error:
        return error_response(error)
    return JsonResponse({"watch_url": f"/watch/{token}/", "token": token}, status=201)


@require_http_methods(["POST", "DELETE"])
async def watchers_control(request: HttpRequest, session_id: str) -> HttpResponse:
    """An extension: POST `{"watcher": name}` hands one watcher the keyboard and
    mouse (taking them from any other), DELETE takes them back: 204 each."""
    session = await owned_session(request, session_id)
    if session is None:
        return _not_found()
    broker = await get_broker()
    if request.method == "DELETE":
        broker.viewers.control_take(session_id=session.id)
        return HttpResponse(status=204)
    data = json_object(request)
    if data is None or not isinstance(data.get("watcher"), str):
        return json_error(400, "bad_request",
                          gettext('Send a JSON object with "watcher": the name of a watcher.'))
    refused = _not_live(session)
    if refused is not None:
        return refused
    try:
        broker.viewers.control_give(session_id=session.id, watcher_id=data["watcher"])
    except SessionError as error:
        return error_response(error)
    return HttpResponse(status=204)


async def _watched(token: str) -> VisitorSession:
    session = await watch_session(token)
    if session is None:
        raise Http404("This watch link was revoked, or never existed.")
    return session


def _watch_state(session: VisitorSession, watching: int) -> dict[str, Any]:
    return {"state": session.state, "ended_reason": session.ended_reason,
            "exhibit": session.exhibit.slug, "title": session.exhibit.title, "watchers": watching}


@require_GET
async def watch_page(request: HttpRequest, token: str) -> HttpResponse:
    """`/watch/<token>/`: the machine live and read-only, or the visit's end."""
    session = await _watched(token)
    broker = await get_broker()
    return render(request, "portal/watch.html", {
        "session": session, "exhibit": session.exhibit, "token": token,
        "watch_json": {**_watch_state(session, broker.viewers.watcher_count(session.id)),
                       "vnc_path": f"/ws/watch/{token}/vnc", "state_path": f"/watch/{token}/state"},
    })


@require_GET
async def watch_state(request: HttpRequest, token: str) -> JsonResponse:
    """The watch page's state: the visit's state and how many watch it now; with
    `?watcher=<name>`, whether that watcher has the keyboard and mouse."""
    session = await watch_session(token)
    if session is None:
        return json_error(404, "not_found", gettext("This watch link was revoked, or never existed."))
    broker = await get_broker()
    state = _watch_state(session, broker.viewers.watcher_count(session.id))
    name = request.GET.get("watcher", "")
    state["control"] = bool(name) and broker.viewers.in_control(session.id, name)
    # Which disk is in each drive of the disk box (empty for a machine without one), by label.
    try:
        drives, disks = broker.sandboxes.drives(session_id=session.id)
    except SessionError:
        drives, disks = [], []
    labels = {disk.id: disk.label if disk.id.isdigit() else gettext(disk.label) for disk in disks}
    state["drives"] = [{**entry, "label": None if entry["disk"] is None else labels.get(str(entry["disk"]))}
                       for entry in drives]
    return JsonResponse(state)
