"""A private install of the portal for a harness run alone: its own data directory
and database, no warm pool. (Under pytest, the suite's own fixtures make one.)"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def private_install() -> Path:
    """Point the portal at a new data directory, set Django up and make its database."""
    root = Path(tempfile.mkdtemp(prefix="portal-fuzz-"))
    os.environ["PORTAL_DATA_DIR"] = os.fspath(root)
    os.environ["PORTAL_POOL_SIZE"] = "0"
    os.environ.pop("PORTAL_DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    return root
