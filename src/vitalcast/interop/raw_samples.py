"""The raw samples of a session's window, read in partitions through a server-side cursor, so
an export of a 24-hour session never holds more than one partition in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import sqlalchemy as sa

from vitalcast.catalog import ALL_CODES
from vitalcast.db.engine import Database
from vitalcast.db.tables import health_samples
from vitalcast.samples import Sample
from vitalcast.sessions.models import Session
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import (
    check_window_minutes,
    resolve_resolution,
)

PARTITION_ROWS = 2_000


def window_of(session: Session, window_minutes: int, now_ms: int) -> TelemetryWindow:
    """The window a telemetry GET with ``window_minutes`` (and ``auto`` resolution) shows for
    ``session`` now: the pad is rounded up to that resolution's grid."""
    check_window_minutes(window_minutes)
    resolution = resolve_resolution(
        None,
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=window_minutes,
        now_ms=now_ms,
    )
    return TelemetryWindow.of(
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=window_minutes,
        bucket_ms=resolution.bucket_ms,
        now_ms=now_ms,
    )


async def stream_samples(
    db: Database, user_id: str, window: TelemetryWindow
) -> AsyncIterator[Sequence[Sample]]:
    """Partitions of the user's samples starting in ``window`` (what the telemetry compute
    aggregates), ordered by metric then time: the order of the (user, metric, start) index, so
    the database streams them without sorting."""
    c = health_samples.c
    query = (
        sa.select(c.source, c.record_id, c.metric, c.value, c.unit, c.start_ms, c.end_ms, c.device)
        .where(
            c.user_id == user_id,
            c.metric.in_(ALL_CODES),
            c.start_ms >= window.start_ms,
            c.start_ms < window.end_ms,
            sa.not_(c.deleted),
        )
        .order_by(c.metric, c.start_ms, c.id)
        .execution_options(yield_per=PARTITION_ROWS)
    )
    async with db.read() as conn:
        result = await conn.stream(query)
        async for partition in result.partitions():
            yield [Sample(*row) for row in partition]
