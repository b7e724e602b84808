"""What the catalogue's pages ask of the runtime, without importing it.

Owns: the `Runtime` interface (how an exhibit runs here, whether it starts
instantly, the server's health) and the one slot the runtime registers itself
in when Django starts (`sessions.apps`). Imports point one way: `sessions`
imports `portal`, never the reverse.

Must not: import `sessions`, or start anything.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .models import Exhibit


class Runtime(Protocol):
    def accelerator_for(self, exhibit: Exhibit) -> str:
        """The accelerator the exhibit's machines get here: "kvm" or "tcg"."""

    def start_state_usable(self, exhibit: Exhibit) -> Awaitable[object | None]:
        """The exhibit's start state if machines here may resume it (instant start)."""

    def health(self) -> Awaitable[dict[str, Any]]:
        """`/healthz`'s answer."""


_runtime_get: Callable[[], Awaitable[Runtime]] | None = None


def runtime_register(get: Callable[[], Awaitable[Runtime]]) -> None:
    """Called once by the runtime's app when Django starts: how to reach it."""
    global _runtime_get
    _runtime_get = get


async def runtime() -> Runtime:
    if _runtime_get is None:
        raise LookupError("no runtime is registered (is the sessions app installed?)")
    return await _runtime_get()


_shutdown: Callable[[], Awaitable[bool]] | None = None


def runtime_shutdown_register(shutdown: Callable[[], Awaitable[bool]]) -> None:
    """Called once by the runtime's app: how to end its visits when the server stops."""
    global _shutdown
    _shutdown = shutdown


async def runtime_shutdown() -> bool:
    """End the runtime's visits if it was started in this process (the server is
    stopping); True if it was."""
    return await _shutdown() if _shutdown is not None else False
