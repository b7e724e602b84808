"""Who may show the portal's pages inside a frame.

Owns: the one place that lets a page be framed. Django's clickjacking
middleware sends `X-Frame-Options: DENY` on every page; a page made
embeddable here (the exhibit's embed page, and the machine's page reached
from it) drops that header and instead sends
`Content-Security-Policy: frame-ancestors 'self' <PORTAL_EMBED_ORIGINS…>`, so
the portal itself and the listed sites may frame it and a browser refuses
every other site.

It also owns the cookies' part in embedding: with cross-site cookies on
(`PORTAL_COOKIES_CROSS_SITE`, from `PORTAL_EMBED_CROSS_SITE`), the visitor,
CSRF and language cookies are SameSite=None; Secure (settings) and Partitioned
(here), so a language chosen inside an embedded exhibit stays chosen there.

Must not: make any other page frameable, or decide anything about sessions.
"""
from __future__ import annotations

from typing import TypeVar

from django.conf import settings
from django.http import HttpRequest
from django.http.response import HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

# The query flag that keeps the machine's page chrome-less and frameable when
# it was reached from an embed page.
EMBED_FLAG = "embed"

Response = TypeVar("Response", bound=HttpResponseBase)


def embed_requested(request: HttpRequest) -> bool:
    """Whether the page was asked for as part of an embed (`?embed=1`)."""
    return request.GET.get(EMBED_FLAG) == "1"


def frame_ancestors() -> str:
    """The CSP directive naming who may frame an embeddable page."""
    return " ".join(["frame-ancestors", "'self'", *settings.PORTAL_EMBED_ORIGINS])


def embeddable(response: Response) -> Response:
    """The response, frameable by the portal and the configured sites only."""
    # Read by Django's XFrameOptionsMiddleware: it then sends no X-Frame-Options,
    # which browsers that predate frame-ancestors would obey, refusing every site.
    response.xframe_options_exempt = True  # type: ignore[attr-defined]
    response["Content-Security-Policy"] = frame_ancestors()
    return response


class PartitionedCookiesMiddleware(MiddlewareMixin):
    """Marks the visitor, CSRF and language cookies Partitioned when they are cross-site.

    Browsers that block other sites' cookies inside frames (Chromium does by
    default now, Firefox and Safari partition or block them) still keep a
    Partitioned cookie there, in a jar of the embedding site's own: the visit
    started in the frame stays that frame's. Python's cookie type (before 3.14)
    and Django know no Partitioned attribute, so it rides on SameSite's value,
    which is written last but one: `SameSite=None; Partitioned`.
    """

    def process_response(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if settings.PORTAL_COOKIES_CROSS_SITE:
            names = {settings.SESSION_COOKIE_NAME, settings.CSRF_COOKIE_NAME, settings.LANGUAGE_COOKIE_NAME}
            for name in names & response.cookies.keys():
                morsel = response.cookies[name]
                if morsel["samesite"] == "None":
                    morsel["samesite"] = "None; Partitioned"
        return response
