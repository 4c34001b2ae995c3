"""Removing every trace of a user from Redis: keys whose name holds the user's id or name (rate
limit windows), and values that hold them (a queued or finished telemetry job's data).

Only our own prefixes are scanned (rate limits, the BullMQ queues); a BullMQ job is removed
through BullMQ, which also takes it out of its queue's lists, and any other key is deleted.
Members of lists, sets and sorted sets that hold the user are removed from them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import redis.asyncio as aioredis
from bullmq import Queue

from vitalcast.observability import get_logger
from vitalcast.redis_connections import blocking_options, short_call_client

log = get_logger(__name__)

SCAN_COUNT = 1_000


class SweepIncomplete(Exception):
    """A key could not be removed yet (a job that is running); sweep again later."""


def _holds(value: bytes | str, needles: Sequence[bytes]) -> bool:
    data = value.encode() if isinstance(value, str) else value
    return any(needle in data for needle in needles)


async def sweep(
    redis_url: str, user_id: str, name: str, *, prefixes: Sequence[str], queue_prefix: str
) -> int:
    """Remove the user's keys and values under ``prefixes``; the number of keys touched."""
    needles = [user_id.encode(), name.encode()]
    client = short_call_client(redis_url)
    job_key = re.compile(rf"^{re.escape(queue_prefix)}:(?P<queue>[^:]+):(?P<job>[^:]+)$")
    queues: dict[str, Queue] = {}
    touched = 0
    try:
        for prefix in prefixes:
            async for raw in client.scan_iter(match=f"{prefix}*", count=SCAN_COUNT):
                key = raw.decode()
                if await _sweep_key(client, key, needles, job_key, queues, redis_url, queue_prefix):
                    touched += 1
    finally:
        for queue in queues.values():
            await queue.close()
        await client.aclose()
    return touched


async def _sweep_key(
    client: aioredis.Redis,
    key: str,
    needles: Sequence[bytes],
    job_key: re.Pattern[str],
    queues: dict[str, Queue],
    redis_url: str,
    queue_prefix: str,
) -> bool:
    kind_raw = await client.type(key)
    kind = kind_raw.decode() if isinstance(kind_raw, bytes) else str(kind_raw)
    if _holds(key, needles):
        await client.delete(key)
        return True
    if kind == "string":
        value = await client.get(key)
        if value is not None and _holds(value, needles):
            await client.delete(key)
            return True
    elif kind == "hash":
        values = await client.hgetall(key)
        if any(_holds(v, needles) for v in values.values()):
            match = job_key.match(key)
            if match is not None and b"data" in values:
                queue_name = match.group("queue")
                if queue_name not in queues:
                    connection = blocking_options(redis_url)
                    queues[queue_name] = Queue(
                        queue_name, {"connection": connection, "prefix": queue_prefix}
                    )
                try:
                    await queues[queue_name].remove(match.group("job"))
                except Exception as exc:
                    # An active job is locked; the caller sweeps again once it has finished.
                    log.info("redis_sweep_job_busy", error_type=type(exc).__name__)
                    raise SweepIncomplete(key) from None
            else:
                await client.delete(key)
            return True
    elif kind == "list":
        members = await client.lrange(key, 0, -1)
        hits = [m for m in members if _holds(m, needles)]
        for member in hits:
            await client.lrem(key, 0, member)  # type: ignore[arg-type]
        return bool(hits)
    elif kind == "set":
        hits = [m for m in await client.smembers(key) if _holds(m, needles)]
        if hits:
            await client.srem(key, *hits)
        return bool(hits)
    elif kind == "zset":
        zmembers: list[bytes] = list(await client.zrange(key, 0, -1))  # type: ignore[arg-type]
        hits = [m for m in zmembers if _holds(m, needles)]
        if hits:
            await client.zrem(key, *hits)
        return bool(hits)
    return False
