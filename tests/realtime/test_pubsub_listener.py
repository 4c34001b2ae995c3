"""A server's pub/sub listener (``BoundedRedisManager._listen``): it yields what is published on
its channel and nothing of another, and after its connection is lost it subscribes again and
yields what is published from then on."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import redis.asyncio as aioredis

from vitalcast.realtime.broadcaster import BoundedRedisManager, listener_name

#: how long the test waits for the listener to (re)subscribe: its first retry waits 1 s
SUBSCRIBED_WITHIN_S = 10.0


async def _subscribed(client: aioredis.Redis, channel: str) -> None:
    deadline = time.monotonic() + SUBSCRIBED_WITHIN_S
    while dict(await client.pubsub_numsub(channel)).get(channel.encode(), 0) < 1:
        assert time.monotonic() < deadline, "the listener did not subscribe"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_listener_subscribes_again_after_its_connection_is_lost(
    database_url: str, redis_url: str, unique_prefix: str
) -> None:
    """Messages of the channel arrive as published (bytes), another channel's do not; once
    Redis drops the listener's connection, it subscribes again and the next message arrives."""
    channel = f"{unique_prefix}-sio"
    manager = BoundedRedisManager(redis_url, channel=channel, write_only=True)
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def listen() -> None:
        async for data in manager._listen():
            received.put_nowait(data)

    client = aioredis.Redis.from_url(redis_url)
    task = asyncio.create_task(listen())
    try:
        await _subscribed(client, channel)
        await client.publish(f"{unique_prefix}-other", b"elsewhere")
        await client.publish(channel, b'{"n": 1}')
        assert await asyncio.wait_for(received.get(), 5) == b'{"n": 1}'
        listeners = [c for c in await client.client_list() if c["name"] == listener_name(channel)]
        assert len(listeners) == 1
        await client.client_kill_filter(_id=listeners[0]["id"])
        await _subscribed(client, channel)
        await client.publish(channel, b'{"n": 2}')
        assert await asyncio.wait_for(received.get(), 5) == b'{"n": 2}'
        assert received.empty()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await manager.aclose()
        await client.aclose()
