"""Idempotent writes of samples in the caller's transaction.

Identity is ``(user_id, source, record_id)``. The caller holds the user's row lock (see
``sessions.repository.lock_user``), so no two ingests of one user interleave and new rows can be bulk-inserted
without conflicts; on PostgreSQL they go in with COPY.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.tables import health_samples, ingest_requests, telemetry_cache, users
from vitalcast.samples import Sample, WriteCounts
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.models import Session

# Keeps SQLite's IN lists well under its bound-parameter limit.
_LOOKUP_CHUNK = 1_000
_COLUMNS = ("metric", "value", "unit", "start_ms", "end_ms", "device")


@dataclass
class WriteResult(WriteCounts):
    """What one batch did; ``changed_times_ms`` holds old and new start times of every change."""

    deleted: int = 0
    changed_times_ms: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.inserted or self.updated or self.deleted)


async def find_replay(
    conn: AsyncConnection, user_id: str, request_id: str
) -> tuple[str, int, bytes] | None:
    """(body hash, status, response) stored for an earlier request with this id."""
    row = (
        await conn.execute(
            sa.select(
                ingest_requests.c.body_sha256,
                ingest_requests.c.status_code,
                ingest_requests.c.response,
            ).where(
                ingest_requests.c.user_id == user_id, ingest_requests.c.request_id == request_id
            )
        )
    ).first()
    return None if row is None else (row.body_sha256, row.status_code, bytes(row.response))


async def record_request(
    conn: AsyncConnection,
    *,
    user_id: str,
    request_id: str,
    body_sha256: str,
    status_code: int,
    response: bytes,
    now_ms: int,
) -> None:
    await conn.execute(
        sa.insert(ingest_requests).values(
            user_id=user_id,
            request_id=request_id,
            body_sha256=body_sha256,
            status_code=status_code,
            response=response,
            created_at_ms=now_ms,
        )
    )


# One probe of the unique index per record id, whatever the table statistics say. Without
# statistics (a new or just bulk-loaded table, before autovacuum's ANALYZE) PostgreSQL otherwise
# matches ``record_id = ANY(...)`` by filtering every row of the user and source, which made
# ingest O(table) per batch. ``OFFSET 0`` keeps the LATERAL subquery from being flattened, so its
# three equalities stay one index condition.
_PG_LOOKUP = sa.text(
    """
    SELECT hs.* FROM unnest(CAST(:record_ids AS text[])) AS k(record_id)
    CROSS JOIN LATERAL (
        SELECT * FROM health_samples
        WHERE user_id = :user_id AND source = :source AND record_id = k.record_id
        OFFSET 0
    ) AS hs
    """
).columns(*health_samples.c)


async def _existing(
    conn: AsyncConnection, user_id: str, identities: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], sa.Row[Any]]:  # Any: rows of health_samples
    """Stored rows for these identities, as unique-index lookups, one query per source (a batch
    usually has one); SQLite takes chunked IN lists, well under its bound-parameter limit."""
    by_source: dict[str, list[str]] = {}
    for source, record_id in identities:
        by_source.setdefault(source, []).append(record_id)
    found: dict[tuple[str, str], sa.Row[Any]] = {}  # Any: as above
    for source, record_ids in by_source.items():
        queries: list[sa.Executable]
        if conn.dialect.name == "postgresql":
            queries = [_PG_LOOKUP.bindparams(record_ids=record_ids, user_id=user_id, source=source)]
        else:
            queries = [
                sa.select(health_samples).where(
                    health_samples.c.user_id == user_id,
                    health_samples.c.source == source,
                    health_samples.c.record_id.in_(record_ids[offset : offset + _LOOKUP_CHUNK]),
                )
                for offset in range(0, len(record_ids), _LOOKUP_CHUNK)
            ]
        for query in queries:
            for row in await conn.execute(query):
                found[(row.source, row.record_id)] = row
    return found


def _same(row: sa.Row[Any], sample: Sample) -> bool:  # Any: as above
    return not row.deleted and all(getattr(row, c) == getattr(sample, c) for c in _COLUMNS)


async def write_samples(
    conn: AsyncConnection,
    user_id: str,
    samples: Sequence[Sample],
    deletions: Sequence[tuple[str, str]],
    *,
    change_seq: int,
) -> WriteResult:
    """Insert new samples, update changed ones, soft-delete ``deletions``; count each outcome.

    ``change_seq`` is the value the user's counter will take if anything changes; rows written
    carry it so a later reader can tell which ingest wrote them.
    """
    result = WriteResult()
    existing = await _existing(
        conn, user_id, [(s.source, s.record_id) for s in samples] + list(deletions)
    )
    new_rows: list[dict[str, object]] = []
    updates: list[dict[str, object]] = []
    for sample in samples:
        row = existing.get((sample.source, sample.record_id))
        if row is None:
            new_rows.append(
                {
                    "user_id": user_id,
                    "source": sample.source,
                    "record_id": sample.record_id,
                    "metric": sample.metric,
                    "value": sample.value,
                    "unit": sample.unit,
                    "start_ms": sample.start_ms,
                    "end_ms": sample.end_ms,
                    "device": sample.device,
                    "deleted": False,
                    "change_seq": change_seq,
                }
            )
            result.changed_times_ms.append(sample.start_ms)
        elif _same(row, sample):
            result.unchanged += 1
        else:
            updates.append({"row_id": row.id} | {c: getattr(sample, c) for c in _COLUMNS})
            if not row.deleted:
                result.changed_times_ms.append(row.start_ms)
            result.changed_times_ms.append(sample.start_ms)
    deleted_ids: list[int] = []
    for identity in deletions:
        row = existing.get(identity)
        if row is not None and not row.deleted:
            deleted_ids.append(row.id)
            result.changed_times_ms.append(row.start_ms)
    result.inserted = len(new_rows)
    result.updated = len(updates)
    result.deleted = len(deleted_ids)
    if new_rows:
        await _insert(conn, new_rows)
    if updates:
        await conn.execute(
            sa.update(health_samples)
            .where(health_samples.c.id == sa.bindparam("row_id"))
            .values(**{c: sa.bindparam(c) for c in _COLUMNS}, deleted=False, change_seq=change_seq),
            updates,
        )
    if deleted_ids:
        await conn.execute(
            sa.update(health_samples)
            .where(health_samples.c.id.in_(deleted_ids))
            .values(deleted=True, change_seq=change_seq)
        )
    return result


async def _insert(conn: AsyncConnection, rows: list[dict[str, object]]) -> None:
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        columns = list(rows[0])
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            health_samples.name,
            records=[tuple(r[c] for c in columns) for r in rows],
            columns=columns,
        )
    else:
        await conn.execute(sa.insert(health_samples), rows)


async def set_change_seq(conn: AsyncConnection, user_id: str, change_seq: int) -> None:
    await conn.execute(sa.update(users).where(users.c.id == user_id).values(change_seq=change_seq))


async def mark_caches_stale(conn: AsyncConnection, session_ids: Sequence[str], now_ms: int) -> None:
    """Remember when the first change after each cached payload arrived (freshness-lag metric)."""
    await conn.execute(
        sa.update(telemetry_cache)
        .where(
            telemetry_cache.c.session_id.in_(list(session_ids)),
            telemetry_cache.c.stale_since_ms.is_(None),
        )
        .values(stale_since_ms=now_ms)
    )


async def record_change(
    conn: AsyncConnection, user_id: str, seq: int, changed_times_ms: Sequence[int], *, now_ms: int
) -> list[Session]:
    """Stamp change ``seq`` (the user's counter, locked by the caller) into every session whose
    widest window holds one of ``changed_times_ms``; the sessions it moved.

    Every writer of samples (ingest, range deletion) goes through here, so a change moves the
    counter, the watermarks and the staleness clock of the cached views together.
    """
    await set_change_seq(conn, user_id, seq)
    touched = await session_repository.bump_watermarks(
        conn, user_id, change_seq=seq, changed_times_ms=changed_times_ms, now_ms=now_ms
    )
    if touched:
        await mark_caches_stale(conn, [s.id for s in touched], now_ms)
    return touched
