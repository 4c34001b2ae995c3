"""``ComputeJobHandler``: runs a telemetry job through the worker's ``ComputeBatcher`` (the jobs
a worker processes at once are computed together, ``TelemetryComputer.compute_batch``) and turns
its key's outcome into the job's fate.

| outcome | job |
|---|---|
| computed, skipped_fresh, lease_lost, session_gone | completed (its return value is the outcome) |
| failed | ``JobFailed``: retried with backoff, failed after the last attempt |
| lease_busy | deferred ~1 s (the holder is probably finishing; a dead one's lease runs out) |
| backing_off | deferred until the row's ``next_attempt_ms`` |

Deferring uses no attempt, so a busy lease never fails a job. A job cancelled by a shutting-down
worker gives its lease back, so the worker that takes the job over can start at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from vitalcast.clock import Clock
from vitalcast.queue.jobs import TelemetryJob
from vitalcast.queue.worker import JobDeferred, JobFailed
from vitalcast.telemetry.keys import ComputeOutcome
from vitalcast.telemetry.read.answer import COMPUTE_FAILED
from vitalcast.telemetry.run.batcher import ComputeBatcher
from vitalcast.telemetry.run.computer import TelemetryComputer
from vitalcast.telemetry.run.coordinator import MAX_BATCH

#: how long a job waits when another holder's lease is live
LEASE_BUSY_DEFER_MS = 1_000
RELEASE_TIMEOUT_S = 2.0
# A deferral is never shorter than this (clock skew between processes, rounding).
MIN_DEFER_MS = 50

_COMPLETED = frozenset(
    {
        ComputeOutcome.COMPUTED,
        ComputeOutcome.SKIPPED_FRESH,
        ComputeOutcome.LEASE_LOST,
        ComputeOutcome.SESSION_GONE,
    }
)


class ComputeJobHandler:
    """A ``JobHandler`` over the telemetry computer of a worker process."""

    def __init__(
        self, computer: TelemetryComputer, clock: Clock, *, max_batch: int = MAX_BATCH
    ) -> None:
        self._computer = computer
        self._clock = clock
        self._batcher = ComputeBatcher(computer.compute_batch, max_batch=max_batch)

    async def __call__(self, job: TelemetryJob) -> str:
        try:
            outcome = await self._batcher.compute(job.key, reason=job.reason)
        except asyncio.CancelledError:
            # The job is being released (worker shutdown): free the key for whoever runs it next
            # instead of making them wait for the lease to lapse.
            await self._release(job)
            raise
        if outcome in _COMPLETED:
            return outcome.value
        now_ms = self._clock.now_ms()
        if outcome is ComputeOutcome.LEASE_BUSY:
            raise JobDeferred(now_ms + LEASE_BUSY_DEFER_MS)
        if outcome is ComputeOutcome.BACKING_OFF:
            raise JobDeferred(max(await self._next_attempt_ms(job), now_ms + MIN_DEFER_MS))
        raise JobFailed(await self._error_code(job))

    async def _release(self, job: TelemetryJob) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(RELEASE_TIMEOUT_S):
                await self._computer.release(job.key)

    async def _next_attempt_ms(self, job: TelemetryJob) -> int:
        row = await self._computer.row(job.key)
        if row is None or row.next_attempt_ms is None:
            return 0
        return int(row.next_attempt_ms)

    async def _error_code(self, job: TelemetryJob) -> str:
        try:
            row = await self._computer.row(job.key)
        except Exception:
            return COMPUTE_FAILED
        return (row.error_code if row is not None else None) or COMPUTE_FAILED
