"""Upload handlers: one stops an upload past PORTAL_IMPORT_MAX_BYTES while it streams,
the other keeps the file on disk, never whole in memory, and lets the request delete it.

Owns the size limit and the uploads' temporary files; the form is Django's to parse.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload, TemporaryFileUploadHandler


class LimitedUploadHandler(FileUploadHandler):
    """Counts the bytes of every uploaded file and aborts the request past the limit."""

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.received = 0
        self.limit = settings.PORTAL_IMPORT_MAX_BYTES

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True  # type: ignore[union-attr]
            raise StopUpload(connection_reset=False)
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None


class HeldTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Django's handler for files on disk, whose files the request closes (and so deletes)
    when it ends (`uploads_close`), also when the form was malformed: on a parse error
    Django forgets a half-received file, which stayed on disk until the garbage
    collector came by (found by tests/fuzz)."""

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        held: list[UploadedFile] | None = getattr(self.request, UPLOADS_HELD, None)
        if held is None:
            held = []
            setattr(self.request, UPLOADS_HELD, held)
        held.append(self.file)


UPLOADS_HELD = "portal_uploads_held"


def uploads_close(request: Any) -> None:
    """Close (and so delete) every file the request's upload put on disk."""
    for upload in getattr(request, UPLOADS_HELD, ()):
        upload.close()
