"""The runtime's errors: one base, `SessionError`, whose message is for a person.

Owns: the domain errors the broker, scheduler and keeper raise. Views and
consumers translate them once, at their edge, into an HTTP status or a close
code. Must not: import anything of the runtime, so every module may use it.
"""
from __future__ import annotations


class SessionError(Exception):
    """Base of the broker's errors; the message is for a person."""


class SessionEndedError(SessionError):
    pass


class SessionExistsError(SessionError):
    def __init__(self, session_id: str) -> None:
        super().__init__("This browser already has a machine running.")
        self.session_id = session_id


class SessionBusyError(SessionError):
    pass


class CapacityError(SessionError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Every machine on this server is in use and the waiting line is full. "
                         "Please try again shortly.")
        self.retry_after_s = retry_after_s


class RateLimitedError(SessionError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("Too many machines were started from here in a short time. "
                         "Please wait a moment and try again.")
        self.retry_after_s = retry_after_s


class DisplayUnavailableError(SessionError):
    pass


class ViewerLimitError(SessionError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"This machine is already shown in {limit} places, the most it may be. "
                         "Close one of them and try again.")


class WatcherLimitError(SessionError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} people are watching this machine already, the most there may be. "
                         "Try again when someone has left.")


class WatcherUnknownError(SessionError):
    """No watcher of that name watches the visit (or one does already, when attaching)."""


class AddressLimitError(RateLimitedError):
    def __init__(self, limit: int, retry_after_s: int) -> None:
        SessionError.__init__(
            self, f"Your network already has {limit} machines running or waiting, the most one "
                  "network may have at once. Please end one of them first.")
        self.retry_after_s = retry_after_s


class ExhibitUnavailableError(SessionError):
    """The exhibit cannot start: a master it needs failed its fixity check."""


class NodeUnreachableError(SessionError):
    """The node that holds a visit did not do what it was asked in time."""

    def __init__(self) -> None:
        super().__init__("The server running this machine did not answer. Please try again.")
