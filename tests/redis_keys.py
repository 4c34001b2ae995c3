"""Cleaning up after a test on the shared Redis: delete its own keys, never FLUSHALL/FLUSHDB
(other runs on this machine use the same server)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import redis.asyncio as redis


async def delete_keys(url: str, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, in batches); how many there were."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 500):
            await client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def keys_deleted_after(url: str, pattern: str) -> AsyncIterator[None]:
    """Run the block, then ``delete_keys(url, pattern)`` however it ended."""
    try:
        yield
    finally:
        await delete_keys(url, pattern)
