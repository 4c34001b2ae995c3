"""One telemetry compute: read the session (and its watermark) first, then one GROUP BY over the
raw samples of the window, then the pure assembly of ``downsample`` and the packed payload.

Every sample in the window counts: there is no row cap (the original silently kept the 100 most
recent per metric). Nothing is fetched row by row; the database returns one row per
(metric, bucket, phase).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.catalog import ALL_CODES
from vitalcast.db.tables import sessions
from vitalcast.sessions.models import Session
from vitalcast.telemetry import payload as packing
from vitalcast.telemetry.downsample import Row, build_metrics
from vitalcast.telemetry.models import (
    SCHEMA_VERSION,
    CacheState,
    ComputedTelemetry,
    TelemetryKey,
    TelemetryWindow,
)

# Integer division is portable: every operand is non-negative inside the window, so SQLite's and
# PostgreSQL's truncating ``/`` on integers is a floor. ``GROUP BY 1, 2, 3`` (ordinals) because
# PostgreSQL does not match ``(start_ms - $1) / $2`` in the select list with a second copy of the
# expression carrying other parameter numbers. No ORDER BY: it makes PostgreSQL sort every raw
# row by a collated text key (4x the whole query); the few result rows are sorted in Python.
AGGREGATE_SQL = sa.text(
    """
    SELECT metric,
           (start_ms - :window_start) / :bucket_ms AS bucket,
           CASE WHEN start_ms < :session_start THEN 0
                WHEN start_ms < :session_end THEN 1
                ELSE 2 END AS phase,
           COUNT(*), SUM(value), MIN(value), MAX(value), MIN(start_ms), MAX(start_ms)
    FROM health_samples
    WHERE user_id = :user_id
      AND metric IN :metrics
      AND start_ms >= :window_start
      AND start_ms < :window_end
      AND NOT deleted
    GROUP BY 1, 2, 3
    """
).bindparams(sa.bindparam("metrics", expanding=True))


#: the compute seam: (connection, session read before aggregating, key, now) → result
Aggregator = Callable[[AsyncConnection, Session, TelemetryKey, int], Awaitable[ComputedTelemetry]]


async def load_session(conn: AsyncConnection, key: TelemetryKey) -> Session | None:
    """The key's session with its current watermark; None if gone or not the key's user's."""
    query = sa.select(sessions).where(sessions.c.id == key.session_id)
    if key.user_id:
        query = query.where(sessions.c.user_id == key.user_id)
    row = (await conn.execute(query)).first()
    return None if row is None else Session.from_row(row)


async def aggregate_rows(
    conn: AsyncConnection,
    user_id: str,
    window: TelemetryWindow,
    bucket_ms: int,
    metrics: Sequence[str] = ALL_CODES,
) -> list[Row]:
    """The GROUP BY rows of ``user_id``'s samples in ``window`` (see ``downsample.Row``), in no
    particular order."""
    session_end = window.end_ms if window.session_end_ms is None else window.session_end_ms
    result = await conn.execute(
        AGGREGATE_SQL,
        {
            "window_start": window.start_ms,
            "window_end": window.end_ms,
            "bucket_ms": bucket_ms,
            "session_start": window.session_start_ms,
            "session_end": session_end,
            "user_id": user_id,
            "metrics": list(metrics),
        },
    )
    return [tuple(row) for row in result]


async def compute_telemetry(
    conn: AsyncConnection,
    session: Session,
    key: TelemetryKey,
    now_ms: int,
    *,
    with_insights: bool = True,
) -> ComputedTelemetry:
    """Aggregate and pack the payload of ``key`` for ``session`` (whose watermark was read first).
    ``with_insights=False`` only serves the benchmark that measures what insights cost."""
    window = TelemetryWindow.of(
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=key.window_minutes,
        bucket_ms=key.resolution.bucket_ms,
        now_ms=now_ms,
    )
    bucket_ms = key.resolution.bucket_ms
    rows = await aggregate_rows(conn, session.user_id, window, bucket_ms)
    metrics, raw_count = build_metrics(rows, window, bucket_ms, with_insights=with_insights)
    document = {
        "session_id": session.id,
        "schema_version": SCHEMA_VERSION,
        "compute_version": key.compute_version,
        "computed_at_ms": now_ms,
        "source_watermark": session.source_watermark,
        "live": window.live,
        "resolution": key.resolution.value,
        "bucket_ms": bucket_ms,
        "window": {
            "start_ms": window.start_ms,
            "end_ms": window.end_ms,
            "session_start_ms": window.session_start_ms,
            "session_end_ms": window.session_end_ms,
            "window_minutes": window.window_minutes,
        },
    }
    return ComputedTelemetry(
        state=CacheState.READY if metrics else CacheState.NO_DATA,
        blob=packing.pack(document, metrics),
        source_watermark=session.source_watermark,
        computed_at_ms=now_ms,
        raw_sample_count=raw_count,
        window=window,
    )
