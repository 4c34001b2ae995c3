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
    aggregates), ordered by metric then time: the order of the (user, metric, start) index.
    See ``stream_user_samples``."""
    async for partition in stream_user_samples(db, user_id, window.start_ms, window.end_ms):
        yield partition


async def stream_user_samples(
    db: Database, user_id: str, start_ms: int | None = None, end_ms: int | None = None
) -> AsyncIterator[Sequence[Sample]]:
    """Partitions of the user's samples starting in ``[start_ms, end_ms)`` (unbounded where
    None), ordered by metric then time.

    Each partition is read in a transaction of its own (keyset pages: metric by metric, after
    the last (start, id) sent), never one held across the stream: an export is sent at the
    client's pace, and a client that stops reading must not pin a pooled connection (twenty
    stalled downloads exhausted the pool and every other request waited 30 s for a 500). The
    price is that a sample written during a long export may or may not be in it."""
    for metric in sorted(ALL_CODES):
        after: tuple[int, int] | None = None
        while True:
            async with db.read() as conn:
                page = _page(user_id, metric, start_ms, end_ms, after)
                rows = list(await conn.execute(page))
            if not rows:
                break
            yield [
                Sample(
                    r.source, r.record_id, r.metric, r.value, r.unit, r.start_ms, r.end_ms, r.device
                )
                for r in rows
            ]
            if len(rows) < PARTITION_ROWS:
                break
            after = (rows[-1].start_ms, rows[-1].id)


def _page(
    user_id: str,
    metric: str,
    start_ms: int | None,
    end_ms: int | None,
    after: tuple[int, int] | None,
) -> sa.Select[tuple[object, ...]]:
    c = health_samples.c
    conditions = [c.user_id == user_id, c.metric == metric, sa.not_(c.deleted)]
    if start_ms is not None:
        conditions.append(c.start_ms >= start_ms)
    if end_ms is not None:
        conditions.append(c.start_ms < end_ms)
    if after is not None:
        # the range condition keeps the index scan narrow; the row comparison breaks ties
        conditions += [c.start_ms >= after[0], sa.tuple_(c.start_ms, c.id) > after]
    return (
        sa.select(
            c.id, c.source, c.record_id, c.metric, c.value, c.unit, c.start_ms, c.end_ms, c.device
        )
        .where(*conditions)
        .order_by(c.start_ms, c.id)
        .limit(PARTITION_ROWS)
    )
