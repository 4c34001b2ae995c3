"""``TelemetryWorker``: the BullMQ consumer of ``session-telemetry`` behind ``vitalcast worker``.

It decodes a job, hands it to a handler (in production: ``TelemetryComputer.compute`` via
``queue.handler``), and turns the handler's verdict into BullMQ's: return = completed, ``JobFailed``
= retry with backoff (failed after the last attempt), ``JobDeferred`` = wait without using an
attempt. Short lock and stalled intervals make a killed worker's job run elsewhere within seconds;
``stop`` lets running jobs finish for a grace period and then puts them back in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bullmq.custom_errors import DelayedError, UnrecoverableError

from vitalcast.clock import now_ms
from vitalcast.observability import debug_enabled, get_logger
from vitalcast.queue.fetching import FetchingWorker
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.redis_connections import HeldPublishes, blocking_options
from vitalcast.settings import Settings

log = get_logger(__name__)

# The job lock and the stalled check are settings (queue_lock_ms, queue_stalled_interval_ms): a
# SIGKILLed worker's job runs elsewhere about lock … lock + 2 × stalled interval later. The lock is
# renewed every half of it on the event loop, so a job must never block the loop that long
# (computes await the database; payload building is short).
# A job may be recovered from a dead worker twice before it is failed as "stalled".
MAX_STALLED_COUNT = 2
# After a connection error the worker asks for the next job again this soon (BullMQ: 15 s), so it
# resumes about a second after Redis is back.
RUN_RETRY_DELAY_MS = 1_000
#: seconds ``stop`` lets running jobs finish before it releases them back to the queue
SHUTDOWN_GRACE_S = 8.0
#: seconds between two ``jobs_done`` summary lines (at most; none while no job finished)
SUMMARY_EVERY_S = 60.0


class JobFailed(Exception):
    """The compute failed; BullMQ retries the job with backoff and fails it after the last
    attempt. ``code`` is the stable error code the cache row records."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class JobDeferred(Exception):
    """Not now (another holder's lease is live): run the job again at ``until_ms`` without using
    one of its attempts."""

    def __init__(self, until_ms: int) -> None:
        super().__init__(f"deferred until {until_ms}")
        self.until_ms = until_ms


JobHandler = Callable[[TelemetryJob], Awaitable[str]]
"""Runs one job; returns a short outcome label (stored as the job's return value)."""


class JobSummary:
    """What the jobs that finished did, written as one ``jobs_done`` info line per
    ``every_s`` (the line of the first job finished after that much time, and ``flush`` at
    stop): jobs by reason and outcome, their total and longest time.

    One info line per job cost a scaled-out worker 58-150 µs of a live update's ~3 ms (the
    structlog rendering and the write); each job's line is at debug now, and the counts of
    computes and their times are on ``/metrics`` too. Checked when a job finishes, not on a
    timer: an idle worker wakes for nothing."""

    def __init__(self, every_s: float = SUMMARY_EVERY_S) -> None:
        self._every_s = every_s
        self._since = time.monotonic()
        self._counts: dict[tuple[str, str], int] = {}
        self._total_ms = 0.0
        self._max_ms = 0.0

    def add(self, reason: str, outcome: str, ms: float) -> None:
        key = (reason, outcome)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._total_ms += ms
        self._max_ms = max(self._max_ms, ms)
        if time.monotonic() - self._since >= self._every_s:
            self.flush()

    def flush(self) -> None:
        """Write the line (if any job finished since the last one) and start counting anew."""
        now = time.monotonic()
        if self._counts:
            log.info(
                "jobs_done",
                jobs=sum(self._counts.values()),
                by_reason_outcome={f"{r}/{o}": n for (r, o), n in sorted(self._counts.items())},
                total_ms=round(self._total_ms, 1),
                max_ms=round(self._max_ms, 1),
                over_s=round(now - self._since, 1),
            )
        self._since = now
        self._counts = {}
        self._total_ms = self._max_ms = 0.0


class TelemetryWorker:
    """One BullMQ worker process's consumer: ``concurrency`` jobs at once, at most.

    ``start`` needs a running loop; ``stop`` is idempotent.
    """

    def __init__(
        self,
        settings: Settings,
        handler: JobHandler,
        *,
        concurrency: int,
        name: str | None = None,
        held: HeldPublishes | None = None,
    ) -> None:
        if not settings.redis_url:
            raise ValueError("vitalcast worker needs VITALCAST_REDIS_URL")
        self._settings = settings
        self._handler = handler
        self._concurrency = concurrency
        self._name = name or f"vitalcast-{os.getpid()}"
        self._held = held
        self._worker: FetchingWorker | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        # Set when the grace has passed: running jobs go back to the queue (their handlers,
        # ``_running``, are cancelled). Ours, not BullMQ's cancelAllJobs: once closing, BullMQ's
        # run loop ends and clears its tracked jobs while they still run (bullmq 3.4.4), so
        # their abort signals can no longer be reached.
        self._release = asyncio.Event()
        self._running: set[asyncio.Future[str]] = set()
        self._summary = JobSummary()

    async def start(self) -> None:
        """Connect and start consuming. The blocking connection learns the Redis version first:
        without it BullMQ rounds delays and backoffs up to whole seconds."""
        worker = FetchingWorker(
            self._settings.queue_name,
            self._process,
            {
                "connection": blocking_options(self._settings.redis_url or ""),
                "prefix": self._settings.queue_prefix,
                "concurrency": self._concurrency,
                "autorun": False,
                "lockDuration": self._settings.queue_lock_ms,
                "stalledInterval": self._settings.queue_stalled_interval_ms,
                "maxStalledCount": MAX_STALLED_COUNT,
                "runRetryDelay": RUN_RETRY_DELAY_MS,
                "name": self._name,
            },
            held=self._held,
        )
        worker.on("error", _log_worker_error)
        worker.on("stalled", lambda job_id, *_: log.warning("job_stalled", job_id=job_id))
        await worker.blockingRedisConnection.getRedisVersion()
        self._worker = worker
        self._run_task = asyncio.create_task(worker.run(), name="bullmq-worker")
        log.info(
            "worker_started",
            queue=self._settings.queue_name,
            concurrency=self._concurrency,
            worker=self._name,
        )

    async def stop(self, *, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Take no new jobs, let running ones finish for ``grace_s``, then release the rest back
        to the queue (another worker starts them at once) and close the connections."""
        if self._stopping is None:
            self._stopping = asyncio.create_task(self._stop(grace_s))
        await asyncio.shield(self._stopping)

    async def _stop(self, grace_s: float) -> None:
        worker = self._worker
        if worker is None:
            return
        closing = asyncio.create_task(worker.close())
        done, _ = await asyncio.wait({closing}, timeout=grace_s)
        if not done:
            log.warning("worker_releasing_jobs", count=len(worker.jobs))
            self._release.set()
            for work in list(self._running):
                work.cancel()
            await closing
        if self._run_task is not None:
            with contextlib.suppress(Exception):
                await self._run_task
        self._summary.flush()
        log.info("worker_stopped", worker=self._name)

    async def _process(self, job: Any, token: str) -> str:  # Any: a bullmq Job (untyped)
        try:
            request = TelemetryJob.from_data(job.data)
        except (KeyError, TypeError, ValueError) as exc:
            log.error("job_malformed", job_id=job.id)
            raise UnrecoverableError(f"malformed job: {type(exc).__name__}") from exc
        started = time.perf_counter()
        # The handler runs in a task of its own, which a release cancels (``_stop``); no waiter
        # of the release beside it: a job is short, and a task and a wait per job cost CPU.
        work = asyncio.ensure_future(self._handler(request))
        self._running.add(work)
        try:
            outcome = await work
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._release.is_set() or (task is not None and task.cancelling()):
                raise
            await job.moveToDelayed(now_ms(), token)
            log.info("job_released", job_id=job.id)
            raise DelayedError() from None
        except JobDeferred as deferred:
            await job.moveToDelayed(deferred.until_ms, token)
            log.info("job_deferred", job_id=job.id, until_ms=deferred.until_ms)
            raise DelayedError() from None
        except JobFailed as failed:
            ms = _ms_since(started)
            log.warning(
                "job_failed",
                job_id=job.id,
                error_code=failed.code,
                attempt=job.attemptsMade + 1,
                ms=ms,
            )
            raise
        finally:
            self._running.discard(work)
        ms = _ms_since(started)
        reason = request.reason.value
        if debug_enabled():
            log.debug("job_done", job_id=job.id, reason=reason, outcome=outcome, ms=ms)
        self._summary.add(reason, outcome, ms)
        return outcome


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _log_worker_error(error: object, *_: object) -> None:
    log.warning("worker_error", error=type(error).__name__, detail=str(error)[:200])
