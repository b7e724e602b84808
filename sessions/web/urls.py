"""The runtime's HTTP routes, included by the site's URLs (`portal.urls`) by name."""
from __future__ import annotations

from django.urls import path

from . import api, operators, prints, recordings, tools

urlpatterns = [
    path("sessions/<str:session_id>/", api.session_page, name="session"),
    path("api/exhibits/<slug:slug>/sessions", api.session_create),
    path("api/exhibits/<slug:slug>/v/<str:version>/sessions", api.session_version_create),
    path("api/exhibits/<slug:slug>/preview", api.session_preview),
    path("api/sessions/<str:session_id>", api.session_detail),
    path("api/sessions/<str:session_id>/reset", api.session_reset),
    path("api/sessions/<str:session_id>/save-master", api.session_save_master),
    path("api/sessions/<str:session_id>/save", api.session_save),
    path("metrics", operators.metrics),
    # Recordings: made on a visit, played by their link, exported, shown as an exhibit's tour.
    path("api/sessions/<str:session_id>/recording", recordings.session_recording),
    path("api/recordings/<str:recording_id>.webm", recordings.recording_video),
    path("api/recordings/<str:recording_id>", recordings.recording_detail),
    path("api/recordings/<str:recording_id>/index", recordings.recording_index),
    path("api/recordings/<str:recording_id>/segments/<int:number>", recordings.recording_segment),
    path("api/recordings/<str:recording_id>/sound.ogg", recordings.recording_sound),
    path("recordings/<str:recording_id>/", recordings.recording_page, name="recording"),
    path("api/exhibits/<slug:slug>/tour", recordings.exhibit_tour),
    path("api/sessions/<str:session_id>/checkpoints", api.checkpoints),
    path("api/sessions/<str:session_id>/checkpoints/<str:checkpoint_id>", api.checkpoint_detail),
    path("api/sessions/<str:session_id>/checkpoints/<str:checkpoint_id>/restore", api.checkpoint_restore),
    path("api/sessions/<str:session_id>/media", api.media),
    path("api/sessions/<str:session_id>/files.zip", api.files_zip),
    path("api/sessions/<str:session_id>/drives", api.drives),
    path("api/sessions/<str:session_id>/drives/<str:drive>", api.drive_put),
    path("api/sessions/<str:session_id>/prints", prints.prints),
    path("api/sessions/<str:session_id>/prints/<str:print_id>.pdf", prints.print_file, {"suffix": "pdf"}),
    path("api/sessions/<str:session_id>/prints/<str:print_id>.raw", prints.print_file, {"suffix": "raw"}),
    # The visitor's tools: typing, the screenshot, watch links and their page.
    path("api/sessions/<str:session_id>/keys", tools.keys),
    path("api/sessions/<str:session_id>/key_mode", tools.key_mode),
    path("api/sessions/<str:session_id>/screenshot.png", tools.screenshot),
    path("api/sessions/<str:session_id>/screen.txt", tools.screen_text),
    path("api/watch/<str:token>/screen.txt", tools.watch_screen_text),
    path("api/sessions/<str:session_id>/watchers", tools.watchers),
    path("api/sessions/<str:session_id>/watchers/control", tools.watchers_control),
    path("watch/<str:token>/", tools.watch_page, name="watch"),
    path("watch/<str:token>/state", tools.watch_state),
]
