"""portal/channel_layer.py against a real Redis (started by the test, private, stopped after)."""
from __future__ import annotations

import asyncio

from deploy.services import Redis
from portal.channel_layer import PubSubChannelLayer


async def test_a_cancelled_send_is_cancelled(redis: Redis) -> None:
    """redis-py's asyncio client can swallow a cancel that arrives mid-command; a send
    through the portal's layer ends in CancelledError whenever its cancel was taken."""
    layer = PubSubChannelLayer(hosts=[redis.url], prefix="test")
    try:
        taken = 0
        for attempt in range(200):
            sending = asyncio.create_task(layer.group_send("visitors", {"type": "x", "n": attempt}))
            for _ in range(attempt % 7):  # cancel at different points of the publish
                await asyncio.sleep(0)
            if not sending.cancel():
                continue  # it had finished already
            taken += 1
            async with asyncio.timeout(10):
                done, _ = await asyncio.wait({sending})
            assert sending in done, f"attempt {attempt}: the cancel was lost"
            assert sending.cancelled(), f"attempt {attempt}: the cancel was lost"
        assert taken, "no send was ever under way when cancelled"
    finally:
        await layer.flush()


async def test_it_delivers_to_a_group_through_redis(redis: Redis) -> None:
    sender = PubSubChannelLayer(hosts=[redis.url], prefix="test")
    listener = PubSubChannelLayer(hosts=[redis.url], prefix="test")
    try:
        channel = await listener.new_channel()
        await listener.group_add("session.abc", channel)
        await sender.group_send("session.abc", {"type": "session.event", "event": {"type": "changed"}})
        async with asyncio.timeout(10):
            assert await listener.receive(channel) == {"type": "session.event",
                                                       "event": {"type": "changed"}}
    finally:
        await sender.flush()
        await listener.flush()
