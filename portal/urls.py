from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from . import front, views

urlpatterns = [
    path("", views.exhibit_list_page, name="exhibit-list"),
    path("exhibits/<slug:slug>/", views.exhibit_page, name="exhibit"),
    path("exhibits/<slug:slug>/embed", views.exhibit_embed_page, name="exhibit-embed"),
    path("exhibits/<slug:slug>/v/<str:version>/", views.exhibit_version_page, name="exhibit-version"),
    path("sitemap.xml", front.sitemap_xml),
    path("robots.txt", front.robots_txt),
    path("healthz", views.healthz),
    # The page scripts' catalogue, one address per language (pages name theirs), and
    # the language switcher's form (Django's set_language: the cookie, then `next`).
    path("jsi18n/<str:language>.js", views.script_catalogue, name="script-catalogue"),
    path("i18n/setlang/", views.language_choose, name="set_language"),
    path("api/csrf", views.api_csrf),
    path("api/exhibits", views.api_exhibit_list),
    path("api/exhibits/<slug:slug>", views.api_exhibit_detail),
    path("thumbnails/<str:name>", views.thumbnail),
    # The runtime's routes (sessions, their pages and API), by name: the site
    # does not import the runtime.
    path("", include("sessions.web.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "portal.views.bad_request"
handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"
