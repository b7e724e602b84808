from __future__ import annotations

import logging
from pathlib import Path

from django.apps import AppConfig
from django.conf import settings

from .data_dir import data_dir_secure, sqlite_files

logger = logging.getLogger(__name__)


class PortalConfig(AppConfig):
    name = "portal"
    verbose_name = "Portal catalogue"

    def ready(self) -> None:
        # Before any command or server opens the database, so SQLite never makes
        # it (or its journals) with the umask's mode; a few chmods, nothing async.
        data_dir = Path(settings.PORTAL_DATA_DIR)
        tightened = data_dir_secure(
            data_dir=data_dir,
            private_dirs=[Path(settings.PORTAL_IMAGE_DIR), Path(settings.PORTAL_RUN_DIR)],
            private_files=[data_dir / "secret_key"],
            databases=sqlite_files(settings.DATABASES),
        )
        for path in tightened:
            logger.warning("made %s private: an older version left it readable by other users", path)
