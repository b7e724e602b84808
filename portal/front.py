"""The front door: the gallery of exhibits, and what exhibit pages tell the web.

Owns: the gallery's filters, sorts and pages (server-rendered, no script needed);
an exhibit page's schema.org JSON-LD, Open Graph and Twitter card tags and
canonical link (absolute from PORTAL_PUBLIC_URL, never the request's Host); the
sitemap and robots.txt.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils.html import escape, format_html
from django.utils.safestring import SafeString, mark_safe
from django.utils.translation import gettext, gettext_lazy

from .models import Exhibit
from .versions import public_url

PAGE_SIZE = 24
SORTS = {"title": ("title", "pk"), "year": ("year", "title", "pk"), "newest": ("-created_at", "-pk")}
SORT_NAMES = {"title": gettext_lazy("Title"), "year": gettext_lazy("Year"),
              "newest": gettext_lazy("Newest first")}
DECADE = re.compile(r"1[0-9]{2}0|20[0-9]0")
QUERY_MAX = 100
# What schema.org's operatingSystem says for each platform.
OPERATING_SYSTEMS = {"dos": "MS-DOS", "windows3": "Windows 3.x", "other": "PC"}
# JSON inside <script>: a curator's "</script>" or "<!--" must not end or open anything.
SCRIPT_ESCAPES = {ord(">"): "\\u003E", ord("<"): "\\u003C", ord("&"): "\\u0026"}


@dataclass
class GalleryChoice:
    """What a visitor asked the gallery for, each value checked (an unknown one is dropped)."""

    q: str = ""
    decade: int | None = None
    platform: str = ""
    sort: str = "title"

    @classmethod
    def from_request(cls, request: HttpRequest) -> GalleryChoice:
        decade = request.GET.get("decade", "")
        platform = request.GET.get("platform", "")
        sort = request.GET.get("sort", "")
        return cls(q=" ".join(request.GET.get("q", "").split())[:QUERY_MAX],
                   decade=int(decade) if DECADE.fullmatch(decade) else None,
                   platform=platform if platform in Exhibit.Platform.values else "",
                   sort=sort if sort in SORTS else "title")

    def filtered(self) -> QuerySet[Exhibit]:
        exhibits = Exhibit.objects.filter(published=True)
        if self.q:
            exhibits = exhibits.filter(Q(title__icontains=self.q) | Q(publisher__icontains=self.q))
        if self.decade is not None:
            exhibits = exhibits.filter(year__gte=self.decade, year__lte=self.decade + 9)
        if self.platform:
            exhibits = exhibits.filter(platform=self.platform)
        return exhibits.order_by(*SORTS[self.sort]).only(
            "slug", "title", "year", "publisher", "platform", "cpu", "thumbnail_small", "translations",
            "language")

    def query_without_page(self) -> str:
        """The choice as a query string, for the page links."""
        from urllib.parse import urlencode
        pairs = [("q", self.q), ("decade", str(self.decade) if self.decade else ""),
                 ("platform", self.platform), ("sort", "" if self.sort == "title" else self.sort)]
        return urlencode([(key, value) for key, value in pairs if value])


def gallery_context(request: HttpRequest) -> dict[str, Any]:
    choice = GalleryChoice.from_request(request)
    page: Page[Exhibit] = Paginator(choice.filtered(), PAGE_SIZE).get_page(request.GET.get("page"))
    years = (Exhibit.objects.filter(published=True, year__isnull=False).order_by()
             .values_list("year", flat=True).distinct())
    decades = sorted({year - year % 10 for year in years if year is not None})
    return {"choice": choice, "page": page, "exhibits": page.object_list, "decades": decades,
            "platforms": Exhibit.Platform.choices, "sorts": list(SORT_NAMES.items()),
            "query": choice.query_without_page(),
            "canonical": public_url("/") if page.number == 1 and not choice.query_without_page() else ""}


def thumbnail_url(name: str) -> str:
    return public_url(f"/thumbnails/{name}") if name else ""


def json_ld(exhibit: Exhibit, *, canonical: str, version: str) -> SafeString:
    """The exhibit as schema.org JSON-LD in its <script> element, escaped for HTML."""
    data: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "VideoGame" if exhibit.kind == Exhibit.Kind.GAME else "SoftwareApplication",
        "@id": canonical, "url": canonical, "name": exhibit.title,
        "inLanguage": exhibit.language,
        "operatingSystem": OPERATING_SYSTEMS.get(exhibit.platform, "PC"),
        "applicationCategory": "Game" if exhibit.kind == Exhibit.Kind.GAME else "Software",
        "identifier": [{"@type": "PropertyValue", "propertyID": "SHA-256", "value": exhibit.image.sha256},
                       {"@type": "PropertyValue", "propertyID": "version", "value": version}],
        "version": version, "isAccessibleForFree": True,
    }
    if exhibit.description:
        data["description"] = exhibit.description
    if exhibit.year:
        data["datePublished"] = str(exhibit.year)
    if exhibit.publisher:
        data["publisher"] = {"@type": "Organization", "name": exhibit.publisher}
    if exhibit.thumbnail:
        data["image"] = thumbnail_url(exhibit.thumbnail)
        data["screenshot"] = data["image"]
    if exhibit.rights:
        licence = re.fullmatch(r"https?://\S+", exhibit.rights)
        data["license" if licence else "copyrightNotice"] = exhibit.rights
    if exhibit.kind == Exhibit.Kind.GAME:
        data["gamePlatform"] = OPERATING_SYSTEMS.get(exhibit.platform, "PC")
    text = json.dumps(data, ensure_ascii=False).translate(SCRIPT_ESCAPES)
    return format_html('<script type="application/ld+json">{}</script>', mark_safe(text))


def share_tags(exhibit: Exhibit, *, canonical: str) -> dict[str, str]:
    """The Open Graph and Twitter card tags' values (the template escapes them)."""
    description = " ".join(exhibit.shown_description.split())
    if len(description) > 200:
        description = description[:199].rsplit(" ", 1)[0] + "…"
    return {"canonical": canonical, "title": exhibit.shown_title, "description": description,
            "image": thumbnail_url(exhibit.thumbnail),
            "image_alt": gettext("The screen of %(title)s") % {"title": exhibit.shown_title},
            "site_name": gettext("Preserved software")}


# The sitemap protocol's limit of addresses in one file.
SITEMAP_MAX = 50_000


def sitemap_xml(request: HttpRequest) -> HttpResponse:
    """Published exhibits' pages (sitemaps.org 0.9), absolute from PORTAL_PUBLIC_URL."""
    rows = (Exhibit.objects.filter(published=True).order_by("pk")
            .values_list("slug", "updated_at")[:SITEMAP_MAX])
    entries = "".join(
        f"<url><loc>{escape(public_url(f'/exhibits/{slug}/'))}</loc>"
        f"<lastmod>{updated.date().isoformat()}</lastmod></url>\n" for slug, updated in rows)
    return HttpResponse('<?xml version="1.0" encoding="UTF-8"?>\n'
                        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
                        f"{entries}</urlset>\n", content_type="application/xml")


ROBOTS = """User-agent: *
Disallow: /sessions/
Disallow: /watch/
Disallow: /api/
Disallow: /admin/
Disallow: /recordings/
Disallow: /i18n/
Allow: /

Sitemap: {sitemap}
"""


def robots_txt(request: HttpRequest) -> HttpResponse:
    return HttpResponse(ROBOTS.format(sitemap=public_url("/sitemap.xml")), content_type="text/plain")
