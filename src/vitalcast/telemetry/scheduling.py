"""The scheduling seam: where computes go (the in-process coordinator, or the BullMQ queue in
scaled-out mode), and the one way the rest of telemetry hands a key over."""

from __future__ import annotations

from typing import Protocol

from vitalcast.observability import get_logger
from vitalcast.telemetry.keys import ScheduleReason, TelemetryKey

log = get_logger(__name__)


class Scheduler(Protocol):
    """Where computes go: the in-process coordinator or the BullMQ queue."""

    async def submit(self, key: TelemetryKey, *, watermark: int, reason: ScheduleReason) -> bool:
        """Ask for a compute of ``key``; False when it was shed (the bound was full)."""
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
