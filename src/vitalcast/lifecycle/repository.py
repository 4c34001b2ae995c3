"""Queries of the data lifecycle that belong to no other repository; each runs in the caller's
transaction and commits nothing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.tables import health_samples, sample_identities


@dataclass(frozen=True, slots=True)
class RemovedSamples:
    """What a range deletion removed: every row, and the start times of those that counted
    (a row already deleted through ingest counted for no view)."""

    rows: int
    changed_times_ms: list[int]


async def delete_range(
    conn: AsyncConnection,
    user_id: str,
    *,
    from_ms: int,
    to_ms: int,
    metrics: Sequence[str] | None,
) -> RemovedSamples:
    """Remove the user's samples starting in ``[from_ms, to_ms)`` (of ``metrics``, or all),
    rows and tombstones alike, with their identity rows: the (user, metric, start) index bounds
    the scan, and on PostgreSQL only the months of the range are looked at."""
    c = health_samples.c
    in_range = [c.user_id == user_id, c.start_ms >= from_ms, c.start_ms < to_ms]
    if metrics is not None:
        in_range.append(c.metric.in_(list(metrics)))
    # Their identity rows first (found from the rows while they are there): a record sent
    # again later is a new sample.
    i = sample_identities.c
    await conn.execute(
        sa.delete(sample_identities).where(
            i.user_id == user_id,
            sa.tuple_(i.source, i.record_id, i.start_ms).in_(
                sa.select(c.source, c.record_id, c.start_ms).where(*in_range)
            ),
        )
    )
    statement = sa.delete(health_samples).where(*in_range)
    rows = 0
    times: set[int] = set()
    result = await conn.execute(statement.returning(c.start_ms, c.deleted))
    for start_ms, deleted in result:
        rows += 1
        if not deleted:
            times.add(int(start_ms))
    return RemovedSamples(rows, sorted(times))
