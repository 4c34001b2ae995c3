"""Reads of ``telemetry_cache`` that other parts of telemetry need, one named function each
(the hot read of a GET lives in ``read/reader.py``; the lease and its outcomes in ``leases``).
Each runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.tables import session_changes, sessions, telemetry_cache
from vitalcast.sessions.models import SessionStatus
from vitalcast.telemetry.keys import CacheState, Resolution, TelemetryKey
from vitalcast.telemetry.store.rows import CacheRow, LiveView

c = telemetry_cache.c


_ROW_COLUMNS = (
    c.status,
    c.payload,
    c.source_watermark,
    c.computed_at_ms,
    c.compute_ms,
    c.raw_sample_count,
    c.lease_owner,
    c.lease_expires_ms,
    c.attempts,
    c.next_attempt_ms,
    c.error_code,
    c.stale_since_ms,
)


def _cache_row(values: Sequence[Any]) -> CacheRow:  # Any: the columns of _ROW_COLUMNS
    row = CacheRow(*values)
    return replace(row, status=CacheState(row.status))


def key_clause(key: TelemetryKey) -> sa.ColumnElement[bool]:
    return sa.and_(
        c.session_id == key.session_id,
        c.window_minutes == key.window_minutes,
        c.resolution == key.resolution.value,
        c.compute_version == key.compute_version,
    )


async def keys_of(
    conn: AsyncConnection, session_ids: Sequence[str], *, compute_version: int
) -> list[tuple[str, int, Resolution]]:
    """(session, window, resolution) of every cache row of ``session_ids`` at that version."""
    if not session_ids:
        return []
    rows = await conn.execute(
        sa.select(c.session_id, c.window_minutes, c.resolution).where(
            c.session_id.in_(list(session_ids)), c.compute_version == compute_version
        )
    )
    return [(row.session_id, row.window_minutes, Resolution(row.resolution)) for row in rows]


async def live_views(
    conn: AsyncConnection, session_ids: Sequence[str], *, compute_version: int
) -> list[LiveView]:
    """Every cached view (at ``compute_version``) of those of ``session_ids`` that are live,
    and one row without a view for a live session that has none."""
    if not session_ids:
        return []
    query = (
        sa.select(
            sessions.c.id,
            sessions.c.user_id,
            sessions.c.start_ms,
            sessions.c.source_watermark,
            c.window_minutes,
            c.resolution,
            c.computed_at_ms,
        )
        .select_from(
            sessions.outerjoin(
                telemetry_cache,
                sa.and_(c.session_id == sessions.c.id, c.compute_version == compute_version),
            )
        )
        .where(
            sessions.c.id.in_(list(session_ids)),
            sessions.c.status == SessionStatus.ACTIVE.value,
        )
    )
    return [
        LiveView(
            session_id=row.id,
            user_id=row.user_id,
            session_start_ms=row.start_ms,
            session_watermark=row.source_watermark,
            window_minutes=row.window_minutes,
            resolution=None if row.resolution is None else Resolution(row.resolution),
            computed_at_ms=row.computed_at_ms,
        )
        for row in await conn.execute(query)
    ]


def views_floor(session_id: str, *, compute_version: int) -> sa.ScalarSelect[int]:
    """The oldest watermark among the session's cached payloads at ``compute_version``, as a
    query: the change log up to it serves no view any more (NULL: no cached payload)."""
    return (
        sa.select(sa.func.min(c.source_watermark))
        .where(
            c.session_id == session_id,
            c.compute_version == compute_version,
            c.payload.is_not(None),
        )
        .scalar_subquery()
    )


def views_floor_of_log(*, compute_version: int) -> sa.ScalarSelect[int]:
    """``views_floor`` of the session of each ``session_changes`` row (a correlated query): the
    prune of a batch's sessions in one statement."""
    return (
        sa.select(sa.func.min(c.source_watermark))
        .where(
            c.session_id == session_changes.c.session_id,
            c.compute_version == compute_version,
            c.payload.is_not(None),
        )
        .scalar_subquery()
    )


async def row_of(conn: AsyncConnection, key: TelemetryKey) -> CacheRow | None:
    row = (await conn.execute(sa.select(*_ROW_COLUMNS).where(key_clause(key)))).first()
    return None if row is None else _cache_row(row)


async def rows_of(
    conn: AsyncConnection, keys: Sequence[TelemetryKey]
) -> dict[TelemetryKey, CacheRow]:
    """The rows of ``keys`` that exist, in one read (a list of views, e.g. across sessions)."""
    if not keys:
        return {}
    wanted = {
        (k.session_id, k.window_minutes, k.resolution.value, k.compute_version): k for k in keys
    }
    rows = await conn.execute(
        sa.select(
            c.session_id,
            c.window_minutes,
            c.resolution,
            c.compute_version,
            *_ROW_COLUMNS,
        ).where(
            c.session_id.in_(sorted({k.session_id for k in keys})),
            c.window_minutes.in_(sorted({k.window_minutes for k in keys})),
            c.compute_version.in_(sorted({k.compute_version for k in keys})),
        )
    )
    found: dict[TelemetryKey, CacheRow] = {}
    for row in rows:
        key = wanted.get((row.session_id, row.window_minutes, row.resolution, row.compute_version))
        if key is not None:
            found[key] = _cache_row(row[4:])
    return found
