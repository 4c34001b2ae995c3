"""``SessionTelemetryQueueService``: the scheduler of a scaled-out server. Computes become BullMQ
jobs on Redis that any ``vitalcast worker`` consumes; while Redis is unreachable they run in this
process (the fallback coordinator) and the service keeps probing until Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from bullmq import Job, Queue
from redis.asyncio.client import Pipeline
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vitalcast.observability import Metrics, get_logger
from vitalcast.queue.jobs import JOB_NAME, TelemetryJob, job_options
from vitalcast.queue.pipelines import run_pipeline
from vitalcast.redis_connections import CALL_TIMEOUT_S, blocking_options, short_call_client
from vitalcast.settings import Settings
from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey
from vitalcast.telemetry.scheduling import Scheduler, Submission

log = get_logger(__name__)

#: errors that mean "Redis is not reachable" (as opposed to a bug or a script error)
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    BusyLoadingError,
    OSError,
    TimeoutError,
)
PROBE_INTERVAL_S = 1.0
#: how long a depth read stays good enough to add jobs without reading it first (see ``_add``)
DEPTH_FRESH_S = 1.0
#: job states reported in /metrics
COUNTED_STATES = ("waiting", "active", "delayed", "failed", "completed")


class QueueUnavailable(Exception):
    """Redis cannot be reached; the caller decides whether to wait or fall back."""


class SessionTelemetryQueueService:
    """Scheduler backed by the ``session-telemetry`` BullMQ queue, with in-process fallback.

    ``submit`` never raises for an outage: it returns what the fallback returns and switches to
    degraded mode (metric ``vitalcast_degraded`` = 1, ``ping`` False) until a background probe
    reaches Redis again, after which jobs go to the queue again. Not safe to share across event
    loops.
    """

    def __init__(self, settings: Settings, *, fallback: Scheduler | None, metrics: Metrics) -> None:
        if not settings.redis_url:
            raise ValueError("SessionTelemetryQueueService needs settings.redis_url")
        self._settings = settings
        self._fallback = fallback
        self._metrics = metrics
        self._connection = blocking_options(settings.redis_url)
        self._queue = self._new_queue()
        self._probe_client = short_call_client(settings.redis_url)
        self._degraded = False
        #: the wait list's length seen last, and when (``time.monotonic``)
        self._depth_seen: tuple[int, float] | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._closed = False
        metrics.degraded.set(0)

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and computes run in this process."""
        return self._degraded

    @property
    def queue(self) -> Queue:
        return self._queue

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Queue a compute of ``key``; False when the queue is deeper than ``max_queue_depth``
        (or Redis is unreachable and there is no fallback).

        Per key at most one job runs and one waits (see ``jobs.job_options``): submits that
        arrive while a key's compute runs cost one more compute in total, at the newest watermark.
        """
        if not self._degraded:
            try:
                return await self.enqueue(key, watermark=watermark, reason=reason)
            except QueueUnavailable:
                self._enter_degraded()
        if self._fallback is None:
            return False
        return await self._fallback.submit(key, watermark=watermark, reason=reason)

    async def submit_many(self, submissions: Sequence[Submission]) -> list[bool]:
        """``submit`` of each, in two Redis round trips whatever their number (an ingest that
        touched a user's many live sessions queued them one after another, two round trips
        each, before it answered: 47 ms per ingest in the alerts benchmark)."""
        if not self._degraded:
            try:
                return await self.enqueue_many(submissions)
            except QueueUnavailable:
                self._enter_degraded()
        if self._fallback is None:
            return [False] * len(submissions)
        return [
            await self._fallback.submit(key, watermark=watermark, reason=reason)
            for key, watermark, reason in submissions
        ]

    async def enqueue(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Add the job, no fallback; False when the queue is full. Raises ``QueueUnavailable``."""
        return (await self.enqueue_many([(key, watermark, reason)]))[0]

    async def enqueue_many(self, submissions: Sequence[Submission]) -> list[bool]:
        """``enqueue`` of each; their answers. Raises ``QueueUnavailable``."""
        jobs = [TelemetryJob(key=k, watermark=w, reason=r) for k, w, r in submissions]
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return await self._add(jobs)
        except UNREACHABLE as exc:
            raise QueueUnavailable(str(exc) or type(exc).__name__) from exc

    async def _add(self, jobs: list[TelemetryJob]) -> list[bool]:
        """Add ``jobs`` (BullMQ's add script per job) within the room ``max_queue_depth`` leaves.
        The room is counted when asked, in order: a job that a waiting one of its key absorbs
        still takes a place (the bound is a bound, not an exact depth).

        While the depth seen last (under ``DEPTH_FRESH_S`` ago) left more than half the bound
        free, this is one round trip: the adds ride in the pipeline that reads the depth (the
        ingest path paid a second one on every live update). Otherwise the depth is read first.
        Either way the adds go through ``_add_checked``, which runs again a job whose key and
        watermark had already finished."""
        if not jobs:
            return []
        if self._far_from_full(len(jobs)):
            waiting, finished = await self._add_checked(jobs, read_depth=True)
            room = len(jobs)
        else:
            waiting = int(await self._queue.client.llen(self._queue.keys["wait"]))
            room = max(self._settings.max_queue_depth - waiting, 0)
            _, finished = await self._add_checked(jobs[:room], read_depth=False)
        self._depth_seen = (waiting, time.monotonic())
        # Same key and watermark asked again after its job finished (a lease that was busy, a
        # failure whose backoff ran out): its add found the old job and changed nothing.
        again = [job for job, done in zip(jobs, finished, strict=False) if done]
        for job in again:
            await self._queue.remove(job.id)
        await self._add_now(again)
        return [i < room for i in range(len(jobs))]

    async def _add_checked(
        self, jobs: list[TelemetryJob], *, read_depth: bool
    ) -> tuple[int, list[bool]]:
        """The wait list's length (0 unless ``read_depth``) and, per job, whether its add may
        have been swallowed by a finished job of the same id, in one round trip.

        A job's finished sets are read before its add and again after it, in the same pipeline
        (not a transaction: a worker's scripts can run between its commands). Read only before,
        a job that finished between that read and the add swallowed the add unseen, and the
        submit was lost. Finished either time, it is run again; a job that finished only after
        its add then runs once more than needed, which is rare and harmless."""
        if not jobs:
            return 0, []
        keys = self._queue.keys

        def check(pipe: Pipeline) -> None:
            for job in jobs:
                pipe.zscore(keys["completed"], job.id)
                pipe.zscore(keys["failed"], job.id)

        async def fill(pipe: Pipeline) -> None:
            if read_depth:
                pipe.llen(keys["wait"])
            check(pipe)
            await self._queue_adds(pipe, jobs)
            check(pipe)

        answers = await run_pipeline(self._queue.client, fill)
        waiting = int(answers[0]) if read_depth else 0
        checks = 2 * len(jobs)
        before, after = answers[int(read_depth) : int(read_depth) + checks], answers[-checks:]
        finished = [
            any(seen[at] is not None for seen in (before, after) for at in (2 * i, 2 * i + 1))
            for i in range(len(jobs))
        ]
        return waiting, finished

    def _far_from_full(self, adding: int) -> bool:
        if self._depth_seen is None:
            return False
        depth, seen_at = self._depth_seen
        return (
            time.monotonic() - seen_at < DEPTH_FRESH_S
            and depth + adding <= self._settings.max_queue_depth // 2
        )

    def _bullmq_job(self, job: TelemetryJob) -> Job:
        # merged over the queue's defaults, as ``Queue.add`` does
        opts = {
            **self._queue.jobsOpts,
            **job_options(job, backoff_ms=self._settings.queue_backoff_ms),
        }
        return Job(queue=self._queue, name=JOB_NAME, data=job.to_data(), opts=opts, job_id=job.id)

    async def _queue_adds(self, pipe: Pipeline, jobs: list[TelemetryJob]) -> None:
        for job in jobs:
            await self._queue.scripts.addJob(self._bullmq_job(job), pipe)

    async def _add_now(self, adding: list[TelemetryJob]) -> None:
        """BullMQ's add script per job, in one round trip."""
        if not adding:
            return

        async def fill(pipe: Pipeline) -> None:
            await self._queue_adds(pipe, adding)

        await run_pipeline(self._queue.client, fill)

    async def depth(self) -> int:
        """Jobs waiting to start. Raises ``QueueUnavailable``."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return int(await self._queue.client.llen(self._queue.keys["wait"]))
        except UNREACHABLE as exc:
            raise QueueUnavailable(str(exc) or type(exc).__name__) from exc

    async def counts(self) -> dict[str, int]:
        """Jobs per state (waiting, active, delayed, failed, completed). Raises
        ``QueueUnavailable``."""
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                counts = await self._queue.getJobCounts(*COUNTED_STATES)
        except UNREACHABLE as exc:
            raise QueueUnavailable(str(exc) or type(exc).__name__) from exc
        return {state: int(counts.get(state, 0)) for state in COUNTED_STATES}

    async def ping(self) -> bool:
        """Redis answers now. A failed ping switches to degraded mode (used by /readyz)."""
        if self._degraded:
            return False
        if await self._probe():
            return True
        self._enter_degraded()
        return False

    async def refresh_metrics(self) -> None:
        """Update the queue gauges, the degraded flag and the fallback's own gauges (called
        before /metrics renders)."""
        refresh_fallback = getattr(self._fallback, "refresh_metrics", None)
        if refresh_fallback is not None:
            await refresh_fallback()
        if not self._degraded:
            try:
                for state, count in (await self.counts()).items():
                    self._metrics.queue_jobs.labels(state=state).set(count)
            except QueueUnavailable:
                self._enter_degraded()
        self._metrics.degraded.set(1 if self._degraded else 0)

    async def close(self) -> None:
        self._closed = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
        await self._close_queue(self._queue)
        with contextlib.suppress(*UNREACHABLE):
            await self._probe_client.aclose()

    def _new_queue(self) -> Queue:
        return Queue(
            self._settings.queue_name,
            {"connection": dict(self._connection), "prefix": self._settings.queue_prefix},
        )

    @staticmethod
    async def _close_queue(queue: Queue) -> None:
        with contextlib.suppress(*UNREACHABLE):
            async with asyncio.timeout(CALL_TIMEOUT_S):
                await queue.close()

    async def _probe(self) -> bool:
        try:
            async with asyncio.timeout(CALL_TIMEOUT_S):
                return bool(await self._probe_client.ping())
        except UNREACHABLE:
            return False

    def _enter_degraded(self) -> None:
        if self._closed:
            return
        if not self._degraded:
            self._degraded = True
            self._metrics.degraded.set(1)
            log.warning("queue_degraded", queue=self._settings.queue_name)
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.create_task(self._recover(), name="queue-recovery-probe")

    async def _recover(self) -> None:
        while True:
            if await self._probe():
                break
            await asyncio.sleep(PROBE_INTERVAL_S)
        # The old client may sit in BullMQ's reconnect backoff: start from a fresh one. Close the
        # old one while still degraded: a failure seen after the flag drops must find this probe
        # finished, or _enter_degraded would start none and degraded mode would never end.
        stale, self._queue = self._queue, self._new_queue()
        await self._close_queue(stale)
        self._degraded = False
        self._metrics.degraded.set(0)
        log.info("queue_recovered", queue=self._settings.queue_name)
