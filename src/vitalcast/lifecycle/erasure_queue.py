"""Erasure purges as BullMQ jobs when scaled out: a server queues one, any worker runs it.

A job carries no user: it asks the worker to purge every pending erasure (the ``erasures``
rows are the truth), so nothing in Redis names the user being erased, and a job lost or run
twice changes nothing. A server that cannot reach Redis purges in its own process instead.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from bullmq import Queue, Worker

from vitalcast.lifecycle.erasure import ErasureService, InProcessErasures
from vitalcast.observability import get_logger
from vitalcast.redis_connections import CALL_TIMEOUT_S, blocking_options
from vitalcast.settings import Settings

log = get_logger(__name__)

JOB_NAME = "erase"
JOB_OPTIONS: dict[str, Any] = {  # Any: BullMQ job options, values of mixed JSON types
    "attempts": 5,
    "backoff": {"type": "exponential", "delay": 2_000},
    "removeOnComplete": True,
    "removeOnFail": True,
}


def queue_name(settings: Settings) -> str:
    return f"{settings.queue_name}-erasure"


class QueuedErasures:
    """The scaled-out dispatch: one job per request (idempotent work)."""

    def __init__(self, settings: Settings, fallback: InProcessErasures) -> None:
        assert settings.redis_url
        self._queue = Queue(
            queue_name(settings),
            {"connection": blocking_options(settings.redis_url), "prefix": settings.queue_prefix},
        )
        self._fallback = fallback

    async def dispatch(self) -> None:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S * 2):
                await self._queue.add(JOB_NAME, {}, {"jobId": uuid.uuid4().hex, **JOB_OPTIONS})
        except Exception as exc:
            log.warning("erasure_queue_unavailable", error_type=type(exc).__name__)
            await self._fallback.dispatch()

    async def wait(self) -> None:
        await self._fallback.wait()

    async def stop(self) -> None:
        await self._fallback.stop()
        await self._queue.close()


class ErasureWorker:
    """The worker's consumer of erasure jobs (one at a time)."""

    def __init__(self, settings: Settings, service: ErasureService) -> None:
        assert settings.redis_url
        self._settings = settings
        self._service = service
        self._worker: Worker | None = None

    async def start(self) -> None:
        assert self._settings.redis_url
        self._worker = Worker(
            queue_name(self._settings),
            self._process,
            {
                "connection": blocking_options(self._settings.redis_url),
                "prefix": self._settings.queue_prefix,
                "concurrency": 1,
                "lockDuration": 10_000,
                "stalledInterval": 5_000,
            },
        )

    async def _process(self, _job: Any, _token: str | None = None) -> int:  # Any: bullmq Job
        return await self._service.run_pending()

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.close()
