"""The channel layer in Redis: channels_redis's pub/sub layer, with sends a cancel stops.

Owns: one fix on top of `channels_redis.pubsub.RedisPubSubChannelLayer`. The
asyncio client of redis-py (8.1) can swallow a cancellation that arrives
while a command is under way: the command returns as if nothing happened and
the task that was cancelled carries on. The broker's event task is cancelled
when the portal stops, usually while it is publishing the notices of the
visits the stop has just ended; it would then wait for the next notice
forever, and the server's stop with it. Here a send runs as a task of its
own that the caller awaits through `asyncio.shield`: a cancel reaches the
caller at once, and the publish (a fraction of a millisecond) finishes alone.

And one more: a send on a connection that Redis closed (it restarted) fails
once with ConnectionError before redis-py opens a new one; such a send is
made once more, on the new connection, instead of losing a page's notice.

Must not: change what is sent or to whom.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis
from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger(__name__)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("a channel-layer send finished after its caller left, and failed: %s",
                       task.exception())


class PubSubChannelLayer(RedisPubSubChannelLayer):
    async def send(self, channel: str, message: dict[str, Any]) -> None:
        await self._shielded(self._again_once(lambda: self._get_layer().send(channel, message)))

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        await self._shielded(self._again_once(lambda: self._get_layer().group_send(group, message)))

    @staticmethod
    async def _again_once(sending: Callable[[], Awaitable[None]]) -> None:
        try:
            await sending()
        except redis.ConnectionError as error:
            logger.info("a channel-layer send found its Redis connection closed (%s); "
                        "sending again", error)
            await sending()

    @staticmethod
    async def _shielded(sending: Any) -> None:
        task = asyncio.ensure_future(sending)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_retrieve)
            raise
