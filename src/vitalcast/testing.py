"""Builders that the test suite and the benchmarks share, shipped with the package (as structlog
ships ``structlog.testing``) so neither keeps its own copy: request-shaped samples and users with
bearer tokens, and the telemetry computations they call outside a compute. Nothing here is imported
by the service itself."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby
from operator import itemgetter

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.clock import iso_ms, now_ms
from vitalcast.db.engine import Database, create_engine
from vitalcast.db.tables import health_samples, sample_identities
from vitalcast.ingest.repository import IDENTITY_COLUMNS
from vitalcast.json_types import JsonObject
from vitalcast.local_tokens import issue_token
from vitalcast.sessions import repository as session_repository
from vitalcast.sessions.models import Session
from vitalcast.telemetry.compute.aggregate import session_query
from vitalcast.telemetry.compute.downsample import (
    MetricSeries,
    Row,
    assemble_metrics,
    metric_series,
)
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import TelemetryKey

ROW_ORDER_KEY = itemgetter(0, 1, 2)


def hr_sample(
    record_id: str, at_ms: int, value: float = 72.0, *, source: str = "healthkit", **extra: object
) -> JsonObject:
    """One heart-rate sample as ``POST /api/v1/samples`` takes it (``extra`` adds or overrides
    fields, e.g. ``device`` or ``end``)."""
    return {
        "source": source,
        "record_id": record_id,
        "metric": "heart_rate",
        "value": value,
        "unit": "bpm",
        "start": iso_ms(at_ms),
    } | extra


async def ensure_user(db: Database, name: str) -> str:
    """The id of the user ``name``, created if missing."""
    async with db.write() as conn:
        return await session_repository.get_or_create_user(conn, name, now_ms=now_ms())


async def user_with_token(
    database_url: str, secret: str, name: str | None = None, *, ttl_s: int = 3600
) -> tuple[str, str]:
    """(user id, bearer token valid ``ttl_s``) of the user ``name`` (a fresh random one when
    omitted) in the database at ``database_url``."""
    db = Database(create_engine(database_url))
    try:
        user_id = await ensure_user(db, name or f"u-{uuid.uuid4().hex[:8]}")
    finally:
        await db.dispose()
    issued_ms = now_ms()
    return user_id, issue_token(
        secret, user_id, now_s=issued_ms // 1000, ttl_s=ttl_s, now_ms=issued_ms
    )


async def insert_sample_rows(
    db: Database, rows: Sequence[Mapping[str, object]], *, chunk: int = 2_000
) -> None:
    """Rows of ``health_samples`` straight in (no ingest, no watermark), with their identity
    rows, in one transaction; their months are created first, as an ingest would."""
    await db.partitions.ensure(int(str(r["start_ms"])) for r in rows)
    async with db.write() as conn:
        for offset in range(0, len(rows), chunk):
            part = rows[offset : offset + chunk]
            await conn.execute(sa.insert(health_samples), list(part))
            await conn.execute(
                sa.insert(sample_identities), [{c: r[c] for c in IDENTITY_COLUMNS} for r in part]
            )


async def load_session(conn: AsyncConnection, key: TelemetryKey) -> Session | None:
    """The key's session with its current watermark; None if gone or not the key's user's."""
    row = (await conn.execute(session_query(key))).first()
    return None if row is None else Session.from_row(row)


def build_metrics(
    rows: Iterable[Row], window: TelemetryWindow, bucket_ms: int, *, with_insights: bool = True
) -> tuple[dict[str, JsonObject], int]:
    """The payload's ``metrics`` map (only metrics with samples) and the raw sample count.

    ``with_insights=False`` leaves each metric's ``insights`` out; only the benchmark does, to
    measure what they cost (bench/telemetry.py)."""
    series = series_of(rows, window.start_ms, bucket_ms, with_insights=with_insights)
    return assemble_metrics(series, window, bucket_ms, with_insights=with_insights)


def series_of(
    rows: Iterable[Row], origin_ms: int, bucket_ms: int, *, with_insights: bool = True
) -> dict[str, MetricSeries]:
    """Each metric's ``MetricSeries`` from GROUP BY rows in any order (metrics outside the catalog
    and metrics with AHEAD rows only are left out)."""
    built = (
        metric_series(code, metric_rows, origin_ms, bucket_ms, with_insights=with_insights)
        for code, metric_rows in groupby(sorted(rows, key=ROW_ORDER_KEY), key=itemgetter(0))
    )
    return {series.code: series for series in built if series is not None}
