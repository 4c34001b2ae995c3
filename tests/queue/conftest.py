"""Queue fixtures: settings on a unique BullMQ prefix (keys deleted afterwards), a private
redis-server that a test may stop and start, and a real TelemetryWorker factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TEST_SECRET
from tests.processes import FAST_QUEUE, RedisServer
from tests.redis_keys import delete_keys
from vitalcast.queue.worker import JobHandler, TelemetryWorker
from vitalcast.settings import Settings


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete the BullMQ keys under ``prefix`` on the Redis at ``url``."""
    await delete_keys(url, f"{prefix}:*")


@pytest.fixture
async def queue_settings(
    redis_url: str, unique_prefix: str, tmp_path: Path
) -> AsyncIterator[Settings]:
    """Settings whose queue lives under a unique prefix on the shared Redis; keys removed after."""
    settings = Settings(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        queue_prefix=unique_prefix,
        socketio_channel=f"{unique_prefix}-sio",
        secret=TEST_SECRET,
        **FAST_QUEUE,
    )
    yield settings
    await delete_prefix(redis_url, unique_prefix)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server that the test may ``stop`` and ``start``; stopped at teardown."""
    server = RedisServer(tmp_path, start_timeout_s=10.0)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_worker() -> AsyncIterator[Any]:
    """Factory: a real TelemetryWorker consuming the settings' queue; stopped at teardown."""
    workers: list[TelemetryWorker] = []

    async def start(
        settings: Settings, handler: JobHandler, concurrency: int = 1
    ) -> TelemetryWorker:
        worker = TelemetryWorker(settings, handler, concurrency=concurrency)
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    await asyncio.gather(*(w.stop(grace_s=1.0) for w in workers))
