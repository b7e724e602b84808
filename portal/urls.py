from __future__ import annotations

from django.contrib import admin
from django.urls import path

from sessions import api as session_api

from . import views

urlpatterns = [
    path("", views.exhibit_list_page, name="exhibit-list"),
    path("exhibits/<slug:slug>/", views.exhibit_page, name="exhibit"),
    path("sessions/<str:session_id>/", session_api.session_page, name="session"),
    path("healthz", views.healthz),
    path("api/csrf", views.api_csrf),
    path("api/exhibits", views.api_exhibit_list),
    path("api/exhibits/<slug:slug>", views.api_exhibit_detail),
    path("api/exhibits/<slug:slug>/sessions", session_api.session_create),
    path("api/exhibits/<slug:slug>/preview", session_api.session_preview),
    path("thumbnails/<str:name>", views.thumbnail),
    path("api/sessions/<str:session_id>", session_api.session_detail),
    path("api/sessions/<str:session_id>/reset", session_api.session_reset),
    path("admin/", admin.site.urls),
]

handler404 = "portal.views.not_found"
handler500 = "portal.views.server_error"
