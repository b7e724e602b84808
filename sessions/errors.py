"""The runtime's errors: one base, `SessionError`, whose message is for a person.

Owns: the domain errors the node, the scheduler and the machines raise, each
carrying its own meaning: its machine-readable `code` (the API's `error`, and
the metric label of a refusal), its HTTP `status`, and the WebSocket `close_code`
a socket closes with. Each edge translates them in one place
(`sessions.web.errors`: HTTP and WebSocket; the metrics read `code`).

A message is an English sentence with named placeholders (`%(limit)s`) and
its values apart: `str(error)` is the English sentence (logs, tests), and the
web edge translates the sentence into the visitor's language before it fills
in the values. Every such sentence is marked with `gettext_noop` where it is
written, so that `manage.py makemessages` puts it in the catalogue.

Must not: import anything of the runtime, so every module may use it; nor
Django's translation machinery (the layers below the web edge never ask which
language a visitor reads).
"""
from __future__ import annotations

from typing import Any


def gettext_noop(message: str) -> str:
    """Marks a sentence for the catalogue (makemessages finds it by this name)."""
    return message


ENDED = gettext_noop("This machine has ended.")


class SessionError(Exception):
    """Base of the runtime's errors; the message is for a person.

    `message` is the sentence with `%(name)s` placeholders and `params` their
    values; `str(error)` is the two put together, in English.
    """

    code: str = "server_error"
    status: int = 500
    # 1011: an unexpected server error (docs/api.md, "Close codes").
    close_code: int = 1011
    # Seconds a client should wait before asking again (Retry-After), if any.
    retry_after_s: int | None = None

    def __init__(self, message: str = "", /, **params: Any) -> None:
        self.message = message
        self.params = params
        super().__init__(message % params if params else message)

    def fields(self) -> dict[str, Any]:
        """More fields of the API's error object, beside `error` and `detail`."""
        return {}


class SessionEndedError(SessionError):
    code = "session_ended"
    status = 409
    close_code = 4410

    def __init__(self, message: str = ENDED) -> None:
        super().__init__(message)


class SessionExistsError(SessionError):
    code = "session_exists"
    status = 409

    def __init__(self, session_id: str) -> None:
        super().__init__(gettext_noop("This browser already has a machine running."))
        self.session_id = session_id

    def fields(self) -> dict[str, Any]:
        return {"id": self.session_id, "page_url": f"/sessions/{self.session_id}/"}


class SessionBusyError(SessionError):
    """The visit is alive but not in a phase that can do this now (in line, starting,
    being reset): try again."""

    code = "session_busy"
    status = 409
    close_code = 4409


class SessionQueuedError(SessionBusyError):
    """The visit is still waiting in line: it has no machine to use yet."""

    code = "session_queued"

    def __init__(self) -> None:
        super().__init__(gettext_noop("This visit is still waiting in line for a machine."))


class CapacityError(SessionError):
    code = "capacity"
    status = 503
    retry_after_s: int

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(gettext_noop("Every machine on this server is in use and the waiting line is "
                                      "full. Please try again shortly."))
        self.retry_after_s = retry_after_s


class RateLimitedError(SessionError):
    code = "rate_limited"
    status = 429
    retry_after_s: int

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(gettext_noop("Too many machines were started from here in a short time. "
                                      "Please wait a moment and try again."))
        self.retry_after_s = retry_after_s


class AddressLimitError(RateLimitedError):
    code = "address_limit"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        SessionError.__init__(
            self, gettext_noop("Your network already has %(limit)s machines running or waiting, the most "
                               "one network may have at once. Please end one of them first."), limit=limit)
        self.retry_after_s = retry_after_s


class DisplayUnavailableError(SessionError):
    code = "display_unavailable"
    status = 503
    close_code = 1011


class ViewerLimitError(SessionError):
    code = "viewer_limit"
    status = 429
    close_code = 4429

    def __init__(self, limit: int) -> None:
        super().__init__(gettext_noop("This machine is already shown in %(limit)s places, the most it "
                                      "may be. Close one of them and try again."), limit=limit)


class WatcherLimitError(ViewerLimitError):
    code = "watcher_limit"

    def __init__(self, limit: int) -> None:
        SessionError.__init__(
            self, gettext_noop("%(limit)s people are watching this machine already, the most there may "
                               "be. Try again when someone has left."), limit=limit)


class WatcherUnknownError(SessionError):
    """No watcher of that name watches the visit (or one does already, when attaching)."""

    code = "not_found"
    status = 404
    close_code = 4400


class ExhibitUnavailableError(SessionError):
    """The exhibit cannot start: a master it needs failed its fixity check."""

    code = "exhibit_unavailable"
    status = 409


class NodeUnreachableError(SessionError):
    """The node that holds a visit did not do what it was asked in time."""

    code = "node_unreachable"
    status = 503
    retry_after_s = 5

    def __init__(self) -> None:
        super().__init__(gettext_noop("The server running this machine did not answer. Please try again."))


class GraphicsModeError(SessionError):
    """The guest's screen is in a graphics mode: there is no text to read."""

    code = "graphics_mode"
    status = 409
    close_code = 4409

    def __init__(self, *, width: int, height: int) -> None:
        if width and height:
            super().__init__(gettext_noop("The machine's screen is in a graphics mode "
                                          "(%(width)sx%(height)s): it shows a picture, not text."),
                             width=width, height=height)
        else:
            super().__init__(gettext_noop("The machine's screen is in a graphics mode: it shows a picture, "
                                          "not text."))
        self.width = width
        self.height = height

    def fields(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height}


class SaveRefusedError(SessionError):
    """An uploaded saved visit is damaged, not whole, or was not made by this portal."""

    code = "bad_save"
    status = 400


class SaveMismatchError(SessionError):
    """A saved visit this portal made, that cannot go on here: another exhibit's, or one
    whose start state no longer exists."""

    code = "save_mismatch"
    status = 409

    def __init__(self, message: str, /, *, exhibit: str = "", **params: Any) -> None:
        super().__init__(message, **params)
        self.exhibit = exhibit

    def fields(self) -> dict[str, Any]:
        return {"exhibit": self.exhibit} if self.exhibit else {}


class SaveTooLargeError(SessionError):
    code = "save_too_large"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(gettext_noop("A saved visit may be at most %(limit)s bytes."), limit=limit)


class SaveRateLimitedError(RateLimitedError):
    code = "rate_limited"

    def __init__(self, retry_after_s: int) -> None:
        SessionError.__init__(self, gettext_noop("This visit was saved several times in a short time. "
                                                 "Please wait a moment and save again."))
        self.retry_after_s = retry_after_s
