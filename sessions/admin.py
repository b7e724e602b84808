"""Where Django's admin looks for this app's admin: it lives in the web edge."""
from sessions.web import admin  # noqa: F401
