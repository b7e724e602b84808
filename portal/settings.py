"""Settings for the portal.

Everything a deployment changes comes from the environment, so that `make run`
works with no configuration at all: SQLite and the in-memory channel layer by
default, data under ./var; PostgreSQL and Redis when PORTAL_DATABASE_URL and
PORTAL_REDIS_URL say where. Portal settings start with PORTAL_ and carry their unit.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


# Where the portal keeps its database, masters and secret key.
PORTAL_DATA_DIR = Path(os.environ.get("PORTAL_DATA_DIR", BASE_DIR / "var")).resolve()
# Each session's 0700 run directory (overlay, QMP and VNC sockets, QEMU log)
# lives here. Kept short: a unix socket path must fit in 107 bytes.
PORTAL_RUN_DIR = Path(os.environ.get("PORTAL_RUN_DIR", PORTAL_DATA_DIR / "run")).resolve()
# Masters (read-only base images) are stored here by content address.
PORTAL_IMAGE_DIR = Path(os.environ.get("PORTAL_IMAGE_DIR", PORTAL_DATA_DIR / "images")).resolve()


def _secret_key() -> str:
    from_env = os.environ.get("DJANGO_SECRET_KEY")
    if from_env:
        return from_env
    # One key per installation, made on first start and kept with the data,
    # so sessions survive restarts without anyone configuring anything.
    key_file = PORTAL_DATA_DIR / "secret_key"
    try:
        return key_file.read_text().strip()
    except FileNotFoundError:
        # Private: the database, masters and this key are no other user's business.
        PORTAL_DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_urlsafe(50)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        return key


SECRET_KEY = _secret_key()
# Keys the portal used before, comma-separated: what they signed (cookies, visitors'
# saved visits) is still taken while SECRET_KEY signs anew, so a key can be rotated.
SECRET_KEY_FALLBACKS = [key for key in os.environ.get("DJANGO_SECRET_KEY_FALLBACKS", "").split(",") if key]
DEBUG = _env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [
    host.strip()
    for host in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
    if host.strip()
]
CSRF_TRUSTED_ORIGINS = [
    origin.strip()
    for origin in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",")
    if origin.strip()
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "portal",
    "sessions.apps.VisitorSessionsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Above the session and CSRF middleware: it sees the cookies they set.
    "portal.framing.PartitionedCookiesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The visitor's language (the language cookie, else Accept-Language): after the
    # session middleware, as Django asks, and above everything that answers with
    # words (CommonMiddleware's redirects, the API's JSON 405 below, the views).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A method an API address does not take: the API's JSON error, not Django's empty 405.
    "portal.errors.method_not_allowed_json",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "portal.urls"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.i18n",
                "portal.language.languages",
            ],
        },
    },
]

# PostgreSQL (or any database Django takes) from one URL, the form every host,
# secret store and systemd env file already speaks:
# postgres://USER:PASSWORD@HOST:PORT/NAME. Unset: SQLite in the data directory.
PORTAL_DATABASE_URL = os.environ.get("PORTAL_DATABASE_URL", "")
# A running machine must not end because the database was away for a moment: a
# request that finds it away fails (500) within this many seconds, not later.
PORTAL_DATABASE_CONNECT_TIMEOUT_S = int(os.environ.get("PORTAL_DATABASE_CONNECT_TIMEOUT_S", "5"))
# The most PostgreSQL connections one node keeps open (its pool). Requests queue
# for a connection beyond it; PostgreSQL's max_connections must cover every node's.
PORTAL_DATABASE_POOL_MAX = int(os.environ.get("PORTAL_DATABASE_POOL_MAX", "4"))
_DATABASE_ENGINES = {"django.db.backends.postgresql", "django.db.backends.sqlite3"}

if PORTAL_DATABASE_URL:
    import dj_database_url
    from django.core.exceptions import ImproperlyConfigured

    _database: dict[str, Any] = dict(dj_database_url.parse(PORTAL_DATABASE_URL, conn_max_age=0))
    if _database.get("ENGINE") not in _DATABASE_ENGINES:
        raise ImproperlyConfigured("PORTAL_DATABASE_URL: the portal runs on PostgreSQL "
                                   "(postgres://…) or SQLite (sqlite:///…) only.")
    if _database["ENGINE"] == "django.db.backends.postgresql":
        options = _database.setdefault("OPTIONS", {})
        options.setdefault("connect_timeout", PORTAL_DATABASE_CONNECT_TIMEOUT_S)
        # Connections kept open between requests in psycopg's own pool (Django's
        # way under ASGI): opening one costs PostgreSQL more CPU than all of a
        # visit's statements (bench/coordination.py). Django has the pool check
        # each connection as it is taken, so a restarted server costs at most the
        # requests made while it was away; a request waits at most the connect
        # timeout for one.
        options.setdefault("pool", {
            "min_size": 1, "max_size": PORTAL_DATABASE_POOL_MAX,
            "timeout": PORTAL_DATABASE_CONNECT_TIMEOUT_S,
        })
    DATABASES = {"default": _database}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("PORTAL_DATABASE_PATH", str(PORTAL_DATA_DIR / "portal.sqlite3")),
            # Visitors' machines start and end concurrently; wait for the write
            # lock instead of failing with "database is locked" (SQLite only).
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

# The channel layer carries the broker's "this session changed" notices to the
# pages' event sockets. Unset: in memory (one process). Set (redis://[:PASSWORD@]
# HOST:PORT/DB): Redis publish/subscribe, so a notice reaches a page whichever
# process serves its socket. Pub/sub because a notice is worth nothing late (the
# page reads the state again), the portal has no worker channels that must queue,
# and its subscriber reconnects and subscribes again by itself after Redis
# restarts, so open event sockets survive one. (portal/channel_layer.py: that
# layer, with sends a cancel always stops.)
PORTAL_REDIS_URL = os.environ.get("PORTAL_REDIS_URL", "")
if PORTAL_REDIS_URL:
    CHANNEL_LAYERS = {"default": {
        "BACKEND": "portal.channel_layer.PubSubChannelLayer",
        "CONFIG": {"hosts": [PORTAL_REDIS_URL], "prefix": "portal"},
    }}
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Visitors are anonymous; their session only holds a random visitor id, so a
# signed cookie is enough and a burst of visitors writes no session rows.
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_AGE = 60 * 60 * 24

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LANGUAGE_CODE = "en"
# The languages the pages, the page scripts and the API's error details come in
# (locale/<code>/LC_MESSAGES; docs/developers.md says how to add one). The
# visitor's browser chooses (Accept-Language) and the page's switcher overrides
# it, remembered in the language cookie.
LANGUAGES = [
    ("en", "English"),
    ("de", "German"),
    ("fr", "French"),
    ("es", "Spanish"),
]
LOCALE_PATHS = [BASE_DIR / "locale"]
# The switcher's choice, kept for a year.
LANGUAGE_COOKIE_AGE = 60 * 60 * 24 * 365
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = PORTAL_DATA_DIR / "static"
STATICFILES_DIRS = [
    BASE_DIR / "static",
    # The official noVNC client, installed from npm with a lock file.
    ("novnc", BASE_DIR / "node_modules" / "@novnc" / "novnc"),
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "portal": {"handlers": ["console"], "level": "INFO", "propagate": False},
        "sessions": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # A QMP connection ending after quit is the normal end, not news.
        "qemu.qmp": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # fpdf2's font subsetting names every table it touches.
        "fontTools": {"handlers": ["console"], "level": "WARNING", "propagate": False},
    },
}

# --- The machines -----------------------------------------------------------
PORTAL_QEMU_BINARY = os.environ.get("PORTAL_QEMU_BINARY", "qemu-system-i386")
PORTAL_QEMU_IMG_BINARY = os.environ.get("PORTAL_QEMU_IMG_BINARY", "qemu-img")
# "auto" uses KVM where /dev/kvm is usable and software emulation (TCG) otherwise.
PORTAL_ACCELERATOR = os.environ.get("PORTAL_ACCELERATOR", "auto")
# How long a browser may be away (tab closed, network lost) before its machine ends.
PORTAL_GRACE_S = _env_float("PORTAL_GRACE_S", 60.0)
PORTAL_START_TIMEOUT_S = _env_float("PORTAL_START_TIMEOUT_S", 20.0)
PORTAL_QMP_TIMEOUT_S = _env_float("PORTAL_QMP_TIMEOUT_S", 5.0)
PORTAL_STOP_TIMEOUT_S = _env_float("PORTAL_STOP_TIMEOUT_S", 5.0)
PORTAL_QEMU_IMG_TIMEOUT_S = _env_float("PORTAL_QEMU_IMG_TIMEOUT_S", 30.0)
# Most machines the host runs at once; 0 derives it from memory and cores.
PORTAL_MAX_SESSIONS = int(os.environ.get("PORTAL_MAX_SESSIONS", "0"))
# The warm pool: machines per exhibit (with a start state) that each node keeps
# resumed and paused, so a Start or a Reset only lets one run. They take free
# places only, and give them up first when a visitor needs one. 0 turns it off.
PORTAL_POOL_SIZE = int(os.environ.get("PORTAL_POOL_SIZE", "2"))
# Visitors who wait, first come first served, once every machine is in use;
# past this many, a Start is answered 503 with Retry-After. 0 derives it
# (twice the capacity).
PORTAL_QUEUE_MAX = int(os.environ.get("PORTAL_QUEUE_MAX", "0"))
# The longest visit, and the longest a running machine may go without the
# visitor's keyboard or mouse; each is announced PORTAL_WARNING_S ahead.
PORTAL_SESSION_MAX_S = _env_float("PORTAL_SESSION_MAX_S", 30 * 60.0)
PORTAL_IDLE_S = _env_float("PORTAL_IDLE_S", 10 * 60.0)
PORTAL_WARNING_S = _env_float("PORTAL_WARNING_S", 60.0)
# Starts a client may make: per browser, and per network address (a school
# behind one address gets the larger allowance), within PORTAL_START_WINDOW_S.
PORTAL_STARTS_PER_BROWSER = int(os.environ.get("PORTAL_STARTS_PER_BROWSER", "10"))
PORTAL_STARTS_PER_ADDRESS = int(os.environ.get("PORTAL_STARTS_PER_ADDRESS", "120"))
PORTAL_START_WINDOW_S = _env_float("PORTAL_START_WINDOW_S", 60.0)
# How often a node writes its heartbeat (sessions.placement.nodes), and how long a node
# may go without one before another node ends its visits (reason server).
PORTAL_NODE_HEARTBEAT_S = _env_float("PORTAL_NODE_HEARTBEAT_S", 3.0)
PORTAL_NODE_DEAD_S = _env_float("PORTAL_NODE_DEAD_S", 10.0)
# Where the other nodes reach this node's server (host:port), to pipe to it a
# visitor's requests for one of its visits. Empty: the address and port the
# server was started with (python -m portal.server), which suits one host.
PORTAL_NODE_ADDRESS = os.environ.get("PORTAL_NODE_ADDRESS", "")
# A visitor's request for a visit another node holds is piped to that node
# (portal.relay): how long connecting to it may take (with a WebSocket's opening
# and closing handshakes), and how long it may be silent while it answers (a
# reset answers once the new machine runs).
PORTAL_RELAY_CONNECT_TIMEOUT_S = _env_float("PORTAL_RELAY_CONNECT_TIMEOUT_S", 5.0)
PORTAL_RELAY_READ_TIMEOUT_S = _env_float("PORTAL_RELAY_READ_TIMEOUT_S", 120.0)
# How often the reaper looks for machines and files that no broker owns.
PORTAL_REAPER_INTERVAL_S = _env_float("PORTAL_REAPER_INTERVAL_S", 30.0)
# This install's name on the host (letters, digits, "-" and "_", at most 40): it
# names everything the install makes outside its data directory (its memory
# cgroups), so two installs on one host never touch each other's machines. Empty
# derives it from the data directory's real path. In a portal of several nodes
# it is the node's name.
PORTAL_INSTALL_ID = os.environ.get("PORTAL_INSTALL_ID", "")
# Running as root, each QEMU drops to its own uid from this dedicated range
# (base + 1 .. base + count), leased host-wide with a lock file per uid in
# PORTAL_UID_LEASE_DIR, so installs on one host never share one; "off" keeps
# QEMU as the portal's user.
PORTAL_QEMU_RUNAS = os.environ.get("PORTAL_QEMU_RUNAS", "auto")
PORTAL_QEMU_UID_BASE = int(os.environ.get("PORTAL_QEMU_UID_BASE", "1800000000"))
PORTAL_QEMU_UID_COUNT = int(os.environ.get("PORTAL_QEMU_UID_COUNT", "10000"))
PORTAL_UID_LEASE_DIR = Path(os.environ.get("PORTAL_UID_LEASE_DIR", "/run/portal-uids"))
# A machine may use its guest memory plus this much for QEMU itself.
PORTAL_QEMU_MEMORY_OVERHEAD_MB = int(os.environ.get("PORTAL_QEMU_MEMORY_OVERHEAD_MB", "192"))
# The largest WebSocket message a browser may send (RFB input is a few bytes;
# a clipboard paste is the largest); Daphne is started with the same limit.
PORTAL_WS_MAX_MESSAGE_BYTES = int(os.environ.get("PORTAL_WS_MAX_MESSAGE_BYTES", str(64 * 1024)))
# Display sockets one session may have open at once (tabs, windows, a
# projector); one more is closed with 4429 and a sentence.
PORTAL_DISPLAYS_PER_SESSION = int(os.environ.get("PORTAL_DISPLAYS_PER_SESSION", "4"))
# A viewer whose browser has not read what waits for it (a few hundred KiB at
# most; past that the display is no longer read for it) for this long is
# closed with 4408, and may connect again.
PORTAL_VIEWER_STUCK_S = _env_float("PORTAL_VIEWER_STUCK_S", 30.0)
# Live visits (waiting, starting or running) one network address may hold at
# once; 0 derives it: half the capacity, so one address never takes every
# machine and a school class behind one address still fits.
PORTAL_LIVE_PER_ADDRESS = int(os.environ.get("PORTAL_LIVE_PER_ADDRESS", "0"))
# The largest request body the server reads (refused with 413 by its declared
# length, before it is read), except for curators' image uploads below.
PORTAL_REQUEST_MAX_BYTES = int(os.environ.get("PORTAL_REQUEST_MAX_BYTES", str(1024 * 1024)))
PORTAL_UPLOAD_PATH_PREFIX = "/admin/portal/diskimage/upload/"
# A visitor's files for the running machine (POST /api/sessions/<id>/media): at
# most what one 1.44 MB floppy holds, in one request; the body may be that plus
# PORTAL_MEDIA_ENVELOPE_BYTES for the multipart form around it.
PORTAL_MEDIA_PATH_PATTERN = r"/api/sessions/[^/]+/media"
PORTAL_MEDIA_MAX_BYTES = int(os.environ.get("PORTAL_MEDIA_MAX_BYTES", str(1457664)))
PORTAL_MEDIA_ENVELOPE_BYTES = 64 * 1024
# Disks one visit may bring in (each a floppy in the run directory).
PORTAL_MEDIA_PER_VISIT = int(os.environ.get("PORTAL_MEDIA_PER_VISIT", "10"))
# Saved visits (Save to my computer, Resume from a file): the largest file a visitor
# may bring back (the only route whose body may pass PORTAL_REQUEST_MAX_BYTES for it
# is PORTAL_SAVE_PATH_PATTERN, the exhibit's sessions, with a multipart form), the most
# its contents may unpack to (a bound on a compression bomb's disk and time), and how
# many saves one visit may make within PORTAL_START_WINDOW_S.
PORTAL_SAVE_MAX_BYTES = int(os.environ.get("PORTAL_SAVE_MAX_BYTES", str(64 * 1024 * 1024)))
PORTAL_SAVE_EXPANDED_MAX_BYTES = int(os.environ.get("PORTAL_SAVE_EXPANDED_MAX_BYTES",
                                                    str(1024 * 1024 * 1024)))
PORTAL_SAVES_PER_WINDOW = int(os.environ.get("PORTAL_SAVES_PER_WINDOW", "6"))
PORTAL_SAVE_PATH_PATTERN = r"/api/exhibits/[^/]+/(?:v/[^/]+/)?sessions"
# Checkpoints one visit may keep at once (each holds the guest's memory, in the
# run directory), and how long saving, restoring or deleting one may take.
PORTAL_CHECKPOINTS_PER_VISIT = int(os.environ.get("PORTAL_CHECKPOINTS_PER_VISIT", "5"))
PORTAL_SANDBOX_JOB_TIMEOUT_S = _env_float("PORTAL_SANDBOX_JOB_TIMEOUT_S", 60.0)
# How long reading the files of one disk for files.zip may take.
PORTAL_FILES_OUT_TIMEOUT_S = _env_float("PORTAL_FILES_OUT_TIMEOUT_S", 120.0)
# Printing (LPT1 to PDF). A job ends after this long without a byte from the guest
# (sooner at a form feed, Ctrl-D or PostScript's end); past PORTAL_PRINT_JOB_BYTES
# a job's further bytes are discarded. The paper text jobs are laid out on ("a4" or
# "letter"; an exhibit may choose its own). A visit keeps at most PORTAL_PRINTS_PER_VISIT
# prints, PORTAL_PRINTS_BYTES of them in all. Ghostscript's limits per PostScript job:
# CPU seconds, wall seconds, memory (address space) and output size.
PORTAL_PRINT_IDLE_S = _env_float("PORTAL_PRINT_IDLE_S", 2.0)
PORTAL_PRINT_JOB_BYTES = int(os.environ.get("PORTAL_PRINT_JOB_BYTES", str(8 * 1024 * 1024)))
PORTAL_PRINT_PAPER = os.environ.get("PORTAL_PRINT_PAPER", "a4")
PORTAL_PRINTS_PER_VISIT = int(os.environ.get("PORTAL_PRINTS_PER_VISIT", "50"))
PORTAL_PRINTS_BYTES = int(os.environ.get("PORTAL_PRINTS_BYTES", str(64 * 1024 * 1024)))
PORTAL_PRINT_CPU_S = int(os.environ.get("PORTAL_PRINT_CPU_S", "10"))
PORTAL_PRINT_TIMEOUT_S = _env_float("PORTAL_PRINT_TIMEOUT_S", 20.0)
PORTAL_PRINT_MEMORY_BYTES = int(os.environ.get("PORTAL_PRINT_MEMORY_BYTES", str(768 * 1024 * 1024)))
PORTAL_PRINT_OUTPUT_BYTES = int(os.environ.get("PORTAL_PRINT_OUTPUT_BYTES", str(32 * 1024 * 1024)))
PORTAL_PRINT_PAGES_MAX = int(os.environ.get("PORTAL_PRINT_PAGES_MAX", "200"))
# Visitor tools. Typing (POST /api/sessions/<id>/keys): the most characters one
# request may type, how long each key is held down, and the pause after each.
PORTAL_KEYS_MAX_CHARS = int(os.environ.get("PORTAL_KEYS_MAX_CHARS", "1000"))
PORTAL_KEY_HOLD_MS = int(os.environ.get("PORTAL_KEY_HOLD_MS", "10"))
PORTAL_KEYS_INTERVAL_S = _env_float("PORTAL_KEYS_INTERVAL_S", 0.01)
# The screen as text: the shortest time between two reads of one machine's text
# screen, however many listen or ask (none while nobody does).
PORTAL_SCREEN_TEXT_INTERVAL_MS = int(os.environ.get("PORTAL_SCREEN_TEXT_INTERVAL_MS", "250"))
# Watch-link sockets one visit may have open at once; one more is closed with 4429.
PORTAL_WATCHERS_PER_SESSION = int(os.environ.get("PORTAL_WATCHERS_PER_SESSION", "10"))
# Origins (scheme://host[:port]) besides the portal's own that may open the
# machine's WebSocket, for sites that embed exhibits.
PORTAL_ALLOWED_ORIGINS = [
    origin.strip().rstrip("/")
    for origin in os.environ.get("PORTAL_ALLOWED_ORIGINS", "").split(",")
    if origin.strip()
]

# Sites that may show exhibits in an iframe (/exhibits/<slug>/embed and the
# machine's page started from it): origins (scheme://host[:port]),
# comma-separated. The portal's own pages may always; every other page refuses
# any framing (X-Frame-Options: DENY).
PORTAL_EMBED_ORIGINS = [
    origin.strip().rstrip("/")
    for origin in os.environ.get("PORTAL_EMBED_ORIGINS", "").split(",")
    if origin.strip()
]
# Whether the visitor and CSRF cookies are sent as SameSite=None; Secure, which
# browsers require before they send a cookie inside another site's iframe.
# "auto": when an embedding origin is https (its page can frame only an https
# portal, so Secure cookies reach it); "on", "off". Same-site embeds (the
# museum's www. and portal. hosts) need neither. Secure cookies need the portal
# on HTTPS (or on this host's loopback, which browsers count as secure).
PORTAL_EMBED_CROSS_SITE = os.environ.get("PORTAL_EMBED_CROSS_SITE", "auto").strip().lower()


def _origins_check(name: str, origins: list[str]) -> None:
    from urllib.parse import urlsplit

    from django.core.exceptions import ImproperlyConfigured

    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.hostname or \
                parts.path or parts.query or parts.fragment or parts.username:
            raise ImproperlyConfigured(f"{name}: {origin!r} is not an origin; write scheme://host[:port], "
                                       "such as https://museum.example.org.")


_origins_check("PORTAL_EMBED_ORIGINS", PORTAL_EMBED_ORIGINS)
if PORTAL_EMBED_CROSS_SITE not in {"auto", "on", "off"}:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("PORTAL_EMBED_CROSS_SITE: say auto, on or off.")
# Cross-site cookies are also Partitioned (CHIPS): browsers that block other
# sites' cookies in frames keep these, in a jar of the embedding site's own
# (portal.framing.PartitionedCookiesMiddleware).
PORTAL_COOKIES_CROSS_SITE = PORTAL_EMBED_CROSS_SITE == "on" or (
    PORTAL_EMBED_CROSS_SITE == "auto" and any(o.startswith("https://") for o in PORTAL_EMBED_ORIGINS))
if PORTAL_COOKIES_CROSS_SITE:
    SESSION_COOKIE_SAMESITE = CSRF_COOKIE_SAMESITE = LANGUAGE_COOKIE_SAMESITE = "None"
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = LANGUAGE_COOKIE_SECURE = True

# Who may read /metrics: addresses or networks, comma-separated (the address is
# the client's as the server sees it: behind nginx, with --proxy-headers, the
# visitor's). Default: this host's loopback addresses only.
PORTAL_METRICS_ALLOWED = [
    entry.strip()
    for entry in os.environ.get("PORTAL_METRICS_ALLOWED", "127.0.0.0/8,::1").split(",")
    if entry.strip()
]


def _networks_check(name: str, entries: list[str]) -> None:
    import ipaddress

    from django.core.exceptions import ImproperlyConfigured

    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError as error:
            raise ImproperlyConfigured(f"{name}: {entry!r} is not an address or network ({error}).") \
                from None


_networks_check("PORTAL_METRICS_ALLOWED", PORTAL_METRICS_ALLOWED)

CSRF_FAILURE_VIEW = "portal.views.csrf_failure"

# --- Importing images ---------------------------------------------------------
# Largest file a curator may import or upload; an upload past it is stopped
# while it streams in, and nothing of it is kept. DOS and Windows 3.1 disks are
# rarely above 2 GiB (FAT16's largest partition), hence the defaults.
PORTAL_IMPORT_MAX_BYTES = int(os.environ.get("PORTAL_IMPORT_MAX_BYTES", str(2 * 1024**3)))
# Largest disk (as the guest sees it) an image may describe.
PORTAL_IMAGE_MAX_VIRTUAL_BYTES = int(os.environ.get("PORTAL_IMAGE_MAX_VIRTUAL_BYTES", str(2 * 1024**3)))
# Free space an import must leave on the image store's filesystem: a step that
# could eat into it is refused before it starts.
PORTAL_IMAGE_FREE_MARGIN_BYTES = int(os.environ.get("PORTAL_IMAGE_FREE_MARGIN_BYTES",
                                                    str(512 * 1024**2)))
# Every qemu-img run on an untrusted image is capped like OpenStack's: CPU
# seconds and address space for probing; conversion gets more CPU and time.
PORTAL_QEMU_IMG_CPU_S = int(os.environ.get("PORTAL_QEMU_IMG_CPU_S", "2"))
PORTAL_QEMU_IMG_ADDRESS_SPACE_BYTES = int(os.environ.get("PORTAL_QEMU_IMG_ADDRESS_SPACE_BYTES",
                                                         str(1024**3)))
PORTAL_IMAGE_CONVERT_CPU_S = int(os.environ.get("PORTAL_IMAGE_CONVERT_CPU_S", "600"))
PORTAL_IMAGE_CONVERT_ADDRESS_SPACE_BYTES = int(os.environ.get("PORTAL_IMAGE_CONVERT_ADDRESS_SPACE_BYTES",
                                                              str(4 * 1024**3)))
PORTAL_IMAGE_CONVERT_TIMEOUT_S = _env_float("PORTAL_IMAGE_CONVERT_TIMEOUT_S", 900.0)
# BagIt bags: where the admin's export action writes them and its import action
# reads them (manage.py export_bag and import_bag take any directory), and the
# Source-Organization their bag-info.txt names.
PORTAL_BAG_DIR = Path(os.environ.get("PORTAL_BAG_DIR", PORTAL_DATA_DIR / "bags")).resolve()
PORTAL_BAG_ORGANIZATION = os.environ.get("PORTAL_BAG_ORGANIZATION", "Preserved software portal")
# The portal's public origin (scheme://host[:port], and a path prefix if any): every
# absolute address the pages give the web (canonical links, Open Graph, JSON-LD, the
# sitemap, citations) starts with it, never with the Host a request names.
PORTAL_PUBLIC_URL = os.environ.get("PORTAL_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
if not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", PORTAL_PUBLIC_URL):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("PORTAL_PUBLIC_URL must be an absolute http(s) address such as "
                               "https://museum.example.org.")
# Thumbnails (taken when a start state is made, or from a preview), served under
# /thumbnails/<sha256>.png; in a cluster every node reads the same directory.
PORTAL_THUMBNAIL_DIR = Path(os.environ.get("PORTAL_THUMBNAIL_DIR",
                                           PORTAL_DATA_DIR / "thumbnails")).resolve()
# Recordings of visits and their WebM exports, served under /recordings/<id>/ by
# every node (a shared filesystem in a portal of several nodes, as the images).
PORTAL_RECORDING_DIR = Path(os.environ.get("PORTAL_RECORDING_DIR",
                                           PORTAL_IMAGE_DIR / "recordings")).resolve()
# A recording's bounds: its display's bytes and its length (it stops, keeping what it has).
PORTAL_RECORDING_MAX_BYTES = int(os.environ.get("PORTAL_RECORDING_MAX_BYTES", str(64 * 1024 * 1024)))
PORTAL_RECORDING_MAX_S = _env_float("PORTAL_RECORDING_MAX_S", 30 * 60.0)
# A full picture this often (what a seek starts from), and pictures per second at most.
PORTAL_RECORDING_KEYFRAME_S = _env_float("PORTAL_RECORDING_KEYFRAME_S", 5.0)
PORTAL_RECORDING_FPS = _env_float("PORTAL_RECORDING_FPS", 15.0)
# How long a visitor's recording is kept after their visit (a curator's: until deleted).
PORTAL_RECORDING_VISITOR_KEEP_S = _env_float("PORTAL_RECORDING_VISITOR_KEEP_S", 3600.0)
# WebM exports (ffmpeg): wall-clock seconds, CPU seconds and address space of one, and
# the frames per second of the video.
PORTAL_RECORDING_EXPORT_TIMEOUT_S = _env_float("PORTAL_RECORDING_EXPORT_TIMEOUT_S", 600.0)
PORTAL_RECORDING_EXPORT_CPU_S = int(os.environ.get("PORTAL_RECORDING_EXPORT_CPU_S", "600"))
PORTAL_RECORDING_EXPORT_MEMORY_BYTES = int(os.environ.get("PORTAL_RECORDING_EXPORT_MEMORY_BYTES",
                                                          str(1024 * 1024 * 1024)))
PORTAL_RECORDING_EXPORT_FPS = _env_float("PORTAL_RECORDING_EXPORT_FPS", 10.0)
# Uploads stream to a temporary file; only this much is ever held in memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 256 * 1024
FILE_UPLOAD_HANDLERS = [
    "portal.uploads.LimitedUploadHandler",
    "portal.uploads.HeldTemporaryFileUploadHandler",
]
