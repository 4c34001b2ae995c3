"""Webhook deliveries as durable BullMQ jobs when scaled out (queue ``webhook-deliveries``).

The database row stays the record of a delivery (its attempts, its state, its ``webhook-id``);
a job is the delivery's turn to be sent. Whoever commits deliveries adds one job per delivery,
``jobId`` = the delivery id (so adding it twice is one job); a ``vitalcast worker`` runs it
through ``WebhookDispatcher.attempt_one`` and, when the attempt failed, moves the job to the
delayed set until the retry is due (no BullMQ attempt is used: the backoff is the
dispatcher's, 24 h long). A killed worker's job is stalled and taken over by another; a job lost
with Redis is added again by the servers' sweep of overdue pending rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from typing import Any

from bullmq import Queue
from bullmq.custom_errors import DelayedError

from vitalcast.json_types import JsonObject
from vitalcast.observability import get_logger
from vitalcast.queue.fetching import FetchingWorker
from vitalcast.redis_connections import CALL_TIMEOUT_S, blocking_options
from vitalcast.settings import Settings
from vitalcast.webhooks.service import WebhookDispatcher

log = get_logger(__name__)

QUEUE_NAME = "webhook-deliveries"
JOB_NAME = "deliver"
# As the telemetry worker's (queue/worker.py): a SIGKILLed worker's job runs elsewhere in ~10 s.
LOCK_DURATION_MS = 4_000
STALLED_INTERVAL_MS = 3_000
MAX_STALLED_COUNT = 2
# Finished jobs are not kept: the database row is the record.
JOB_OPTIONS: JsonObject = {"removeOnComplete": True, "removeOnFail": {"count": 1_000}}


class WebhookQueue:
    """The producer side: ``add`` never raises (a job that could not be added is found by the
    servers' sweep)."""

    def __init__(self, settings: Settings) -> None:
        self._queue = Queue(
            QUEUE_NAME,
            {
                "connection": blocking_options(settings.redis_url or ""),
                "prefix": settings.queue_prefix,
            },
        )

    async def add(self, delivery_ids: Sequence[str]) -> None:
        for delivery_id in delivery_ids:
            try:
                async with asyncio.timeout(CALL_TIMEOUT_S):
                    await self._queue.add(
                        JOB_NAME,
                        {"delivery_id": delivery_id},
                        {"jobId": delivery_id, **JOB_OPTIONS},
                    )
            except Exception as exc:
                log.warning(
                    "webhook_job_not_added", delivery_id=delivery_id, error_type=type(exc).__name__
                )

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await self._queue.close()


class WebhookJobWorker:
    """The consumer side, in ``vitalcast worker``: ``concurrency`` attempts at once."""

    def __init__(
        self, settings: Settings, dispatcher: WebhookDispatcher, *, concurrency: int
    ) -> None:
        self._settings = settings
        self._dispatcher = dispatcher
        self._concurrency = concurrency
        self._worker: FetchingWorker | None = None
        self._run_task: asyncio.Task[Any] | None = None  # Any: bullmq Worker.run's, untyped

    async def start(self) -> None:
        worker = FetchingWorker(
            QUEUE_NAME,
            self._process,
            {
                "connection": blocking_options(self._settings.redis_url or ""),
                "prefix": self._settings.queue_prefix,
                "concurrency": self._concurrency,
                "autorun": False,
                "lockDuration": LOCK_DURATION_MS,
                "stalledInterval": STALLED_INTERVAL_MS,
                "maxStalledCount": MAX_STALLED_COUNT,
                "name": f"vitalcast-webhooks-{os.getpid()}",
            },
        )
        await worker.blockingRedisConnection.getRedisVersion()
        self._worker = worker
        self._run_task = asyncio.create_task(worker.run(), name="bullmq-webhooks")
        log.info("webhook_worker_started", concurrency=self._concurrency)

    async def stop(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker.close()
        if self._run_task is not None:
            with contextlib.suppress(Exception):
                await self._run_task

    async def _process(self, job: Any, token: str) -> str:  # Any: a bullmq Job (untyped)
        delivery_id = str(job.data.get("delivery_id", ""))
        next_ms = await self._dispatcher.attempt_one(delivery_id)
        if next_ms is None:
            return "done"
        await job.moveToDelayed(next_ms, token)
        raise DelayedError()
