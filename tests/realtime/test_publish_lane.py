"""The Redis manager's publishing lane (``BoundedRedisManager._publish``): events published on
its kept connection reach a subscriber in order, and a lane whose connection dies is replaced
without losing the event that found it dead."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import redis.asyncio as aioredis

from vitalcast.realtime.broadcaster import BoundedRedisManager


async def _received(pubsub: Any, n: int) -> list[dict[str, Any]]:  # Any: a redis-py PubSub
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(got) < n:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                got.append(json.loads(message["data"]))
    return got


async def test_events_go_out_in_order_on_one_kept_connection_and_survive_its_loss(
    redis_url: str, unique_prefix: str
) -> None:
    channel = f"{unique_prefix}-sio"
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(channel)
    manager = BoundedRedisManager(redis_url, channel=channel, write_only=True)
    try:
        for i in range(5):
            await manager._publish({"method": "emit", "n": i})
        lane = manager._lane.connection
        assert lane is not None
        assert [m["n"] for m in await _received(pubsub, 5)] == list(range(5))
        # the server drops the lane's connection: the next event still arrives, once
        await lane.send_command("CLIENT", "ID")
        await listener.client_kill_filter(_id=await lane.read_response())
        await manager._publish({"method": "emit", "n": 5})
        await manager._publish({"method": "emit", "n": 6})
        assert [m["n"] for m in await _received(pubsub, 2)] == [5, 6]
        # a lane again (the pool's connection, reconnected)
        assert manager._lane.connection is not None and manager._lane.connection.is_connected
    finally:
        await manager.aclose()
        await pubsub.aclose()
        await listener.aclose()
