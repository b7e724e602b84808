"""The runtime's background tasks: how one is made, so that it outlives the request
that started it without keeping that request's database thread.

Owns: `task_new`. Every task's owner keeps the reference, cancels it and awaits it.
"""
from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def task_new(coroutine: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
    """A runtime task, run outside the context of the request that started it.

    A request's context carries its own thread for database calls, which ends
    with the request; a task that outlives the request and used that context
    would make a new thread and database connection for every later call and
    never close them.
    """
    return asyncio.create_task(coroutine, name=name, context=contextvars.Context())
