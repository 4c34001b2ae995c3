"""The scheduling seam: where computes go (the in-process coordinator, or the BullMQ queue in
scaled-out mode), and the one way the rest of telemetry hands a key over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey

log = get_logger(__name__)


#: one compute asked for: the view, the session watermark known, why
Submission = tuple[TelemetryKey, int, ScheduleReason]


class Scheduler(Protocol):
    """Where computes go: the in-process coordinator or the BullMQ queue."""

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Ask for a compute of ``key``; False when it was shed (the bound was full)."""
        ...


class BulkScheduler(Scheduler, Protocol):
    """A scheduler that hands several computes over at once for the price of one (the queue:
    one Redis round trip for all of them, where one submit each cost two)."""

    async def submit_many(self, submissions: Sequence[Submission]) -> list[bool]:
        """``submit`` of each, in order; each one's answer."""
        ...


async def schedule(
    scheduler: Scheduler, key: TelemetryKey, *, watermark: int, reason: ScheduleReason
) -> bool:
    """Hand ``key`` to ``scheduler``; False when it was shed or could not be handed over. Never
    raises: a request or an ingest must not fail because scheduling did (the next read or trigger
    asks again)."""
    try:
        return await scheduler.submit(key, watermark=watermark, reason=reason)
    except Exception as exc:
        log.error(
            "telemetry_schedule_failed",
            session_id=key.session_id,
            reason=reason.value,
            error_type=type(exc).__name__,
        )
        return False


async def schedule_many(scheduler: Scheduler, submissions: Sequence[Submission]) -> list[bool]:
    """``schedule`` of each of ``submissions``, at once where the scheduler can (``BulkScheduler``:
    an ingest that touches a user's many live sessions, a live tick over every subscribed view);
    one by one otherwise. Never raises."""
    if not submissions:
        return []
    submit_many = getattr(scheduler, "submit_many", None)
    if submit_many is None:
        return [
            await schedule(scheduler, key, watermark=watermark, reason=reason)
            for key, watermark, reason in submissions
        ]
    try:
        return list(await submit_many(submissions))
    except Exception as exc:
        log.error(
            "telemetry_schedule_failed",
            session_id=submissions[0][0].session_id,
            reason=submissions[0][2].value,
            views=len(submissions),
            error_type=type(exc).__name__,
        )
        return [False] * len(submissions)
