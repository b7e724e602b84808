"""An upload handler that stops an upload past PORTAL_IMPORT_MAX_BYTES while it streams.

Owns only the size limit; the file itself goes to Django's
TemporaryFileUploadHandler, on disk, never whole in memory.
"""
from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler, StopUpload


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
