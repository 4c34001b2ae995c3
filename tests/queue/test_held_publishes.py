"""A queue worker's Socket.IO publishes ride with its jobs' completions (``HeldPublishes``): a
publish made while a job runs goes out in the pipeline that completes the job, and one made by
a job that ends otherwise (deferred, failed) still goes out when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.waits import eventually
from vitalcast.observability import Metrics
from vitalcast.queue.jobs import TelemetryJob, job_id
from vitalcast.queue.service import SessionTelemetryQueueService
from vitalcast.queue.worker import JobDeferred, JobFailed, TelemetryWorker
from vitalcast.realtime.broadcaster import BoundedRedisManager
from vitalcast.redis_connections import HeldPublishes
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import Resolution, ScheduleReason, TelemetryKey


class NoFallback:
    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        raise AssertionError("Redis is up: nothing falls back")


def _key() -> TelemetryKey:
    return TelemetryKey(
        session_id=str(uuid.uuid4()),
        window_minutes=60,
        resolution=Resolution.ONE_MINUTE,
        user_id=str(uuid.uuid4()),
    )


async def _next_message(pubsub: Any) -> dict[str, Any]:  # Any: a redis-py PubSub
    async with asyncio.timeout(10):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                return dict(json.loads(message["data"]))


@contextlib.asynccontextmanager
async def _publishing(
    settings: Settings,
) -> AsyncIterator[tuple[Any, HeldPublishes, BoundedRedisManager]]:  # Any: a redis-py PubSub
    """A worker's write-only manager whose publishes are held while a job runs, and a
    subscriber to its channel."""
    listener = aioredis.Redis.from_url(settings.redis_url or "")
    pubsub = listener.pubsub()
    await pubsub.subscribe(settings.socketio_channel)
    held = HeldPublishes()
    manager = BoundedRedisManager(
        settings.redis_url or "", channel=settings.socketio_channel, write_only=True, held=held
    )
    try:
        yield pubsub, held, manager
    finally:
        await manager.aclose()
        await pubsub.aclose()
        await listener.aclose()


@pytest.mark.parametrize("ending", ["completed", "deferred", "failed"])
async def test_a_jobs_publish_goes_out_when_the_job_ends(
    queue_settings: Settings, ending: str
) -> None:
    """Completed: the publish arrives with the job already completed (one pipeline, the
    completion first). Deferred or failed: it arrives all the same, once."""
    async with _publishing(queue_settings) as (pubsub, held, manager):
        await _run_ending(queue_settings, ending, pubsub, held, manager)


async def _run_ending(
    queue_settings: Settings,
    ending: str,
    pubsub: Any,
    held: HeldPublishes,
    manager: BoundedRedisManager,
) -> None:
    """One job that ends as ``ending`` says, its handler publishing once per run."""
    service = SessionTelemetryQueueService(queue_settings, fallback=NoFallback(), metrics=Metrics())
    runs: list[int] = []

    async def handler(job: TelemetryJob) -> str:
        runs.append(job.watermark)
        await manager.emit("session.updated", {"n": len(runs)}, room="r", namespace="/")
        assert held.holders == 1  # held, not yet sent
        if ending == "deferred" and len(runs) == 1:
            raise JobDeferred(0)
        if ending == "failed":
            raise JobFailed("COMPUTE_FAILED")
        return "computed"

    worker = TelemetryWorker(queue_settings, handler, concurrency=1, held=held)
    await worker.start()
    key = _key()
    try:
        await service.submit(key, watermark=4, reason=ScheduleReason.LIVE_UPDATE)
        first = await _next_message(pubsub)
        assert (first["event"], first["data"]) == ("session.updated", [{"n": 1}])
        if ending == "completed":
            assert await service.queue.getJobState(job_id(key, 4)) == "completed"
        if ending == "deferred":
            # run again at once; its publish rides with its completion
            second = await _next_message(pubsub)
            assert second["data"] == [{"n": 2}]
            assert await service.queue.getJobState(job_id(key, 4)) == "completed"
        if ending == "failed":

            async def retried() -> bool:
                return len(runs) >= 2

            await eventually(retried, what="the failed job ran again")
            assert (await _next_message(pubsub))["data"] == [{"n": 2}]
        assert held.holders == 0
        assert held.take() == []
    finally:
        await worker.stop(grace_s=1.0)
        await service.close()


async def test_a_publish_made_while_no_job_runs_goes_out_at_once(queue_settings: Settings) -> None:
    """Outside a job nothing would carry it: sent on its own, as before."""
    async with _publishing(queue_settings) as (pubsub, _held, manager):
        await manager.emit("session.status", {"n": 1}, room="r", namespace="/")
        message = await _next_message(pubsub)
        assert (message["event"], message["data"]) == ("session.status", [{"n": 1}])
