"""The aggregate behind every payload: one GROUP BY over the raw samples of a window (or of some
of its bucket ranges), then the pure assembly of ``downsample`` into the payload's document.

Every sample in the window counts: there is no row cap (the original silently kept the 100 most
recent per metric). Nothing is fetched row by row; the database returns one row per
(metric, bucket, phase).

A bucket's row is a function of the samples in it and nothing else, whatever plan the database
picks: sums are exact integers of micro-units (see ``SUM_SCALE``), and count, min, max, first
and last do not depend on the order rows are read in. So re-aggregating some buckets gives
exactly the rows a GROUP BY over the whole window gives for them, which is what lets an
incremental compute (``incremental``) replace only dirty buckets and still be byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.catalog import ALL_CODES
from vitalcast.db.prepared import Prepared
from vitalcast.db.tables import sessions
from vitalcast.json_types import JsonObject
from vitalcast.sessions.models import Session
from vitalcast.telemetry.compute.downsample import (
    AHEAD,
    SUM_SCALE,
    MetricSeries,
    Row,
    assemble_metrics,
)
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import SCHEMA_VERSION, TelemetryKey

#: the scan of a live window has no upper bound: samples ahead of "now" are kept as AHEAD rows
OPEN_END_MS = 2**62

# Integer division is portable: every operand is non-negative inside the window, so SQLite's and
# PostgreSQL's truncating ``/`` on integers is a floor. ``GROUP BY`` ordinals because PostgreSQL
# does not match an expression of the select list with a second copy carrying other parameter
# numbers. No ORDER BY: it makes PostgreSQL sort every raw row by a collated text key (4x the
# whole query); the few result rows are sorted in Python.
# A float SUM would depend on the order the plan feeds rows in (PostgreSQL sorts them with an
# unstable quicksort before a GroupAggregate, and picks other plans for narrower ranges), so the
# sum is taken over exact integers: floor(value × SUM_SCALE + 0.5), the same IEEE arithmetic on
# both databases (values are non-negative, so SQLite's truncating CAST is that floor).
_QUANTIZED = {
    "postgresql": "CAST(FLOOR(s.value * {scale} + 0.5) AS BIGINT)",
    "sqlite": "CAST(s.value * {scale} + 0.5 AS INTEGER)",
}
# The GROUP BY of samples against ranges of a relation ``{r}`` (columns lo, hi, window_start,
# window_end, bucket_ms, session_start, session_end): the columns of a ``downsample.Row``, after
# ``{lead}``. Written once for the two statements that aggregate: a batch's (below) and, on
# PostgreSQL, a compute's claim, which aggregates a live view's guessed tail (``tail_rows_sql``).
_GROUPED = """
SELECT {lead}s.metric AS metric,
       (s.start_ms - {r}.window_start) / {r}.bucket_ms AS bucket,
       CASE WHEN s.start_ms >= {r}.window_end THEN {ahead}
            WHEN s.start_ms < {r}.session_start THEN 0
            WHEN s.start_ms < {r}.session_end THEN 1
            ELSE 2 END AS phase,
       COUNT(*) AS n, CAST(SUM({quantized}) AS BIGINT) AS total,
       MIN(s.value) AS low, MAX(s.value) AS high,
       MIN(s.start_ms) AS first_ms, MAX(s.start_ms) AS last_ms
FROM {source}
WHERE s.user_id = {user}
  AND s.metric IN {metrics}
  AND s.start_ms >= {r}.lo AND s.start_ms < {r}.hi
  AND NOT s.deleted
GROUP BY {ordinals}
"""
# One statement for a whole batch of views: the relation ``r`` holds one row per time range to
# aggregate, with its view's index and grid (user, window start and end, bucket, phases), and each
# sample is grouped with the range it falls in. A view's ranges are disjoint (``merge_ranges``),
# so a sample counts once per view, and a row is still a function of the samples of one bucket of
# one view: a view's rows are the ones it would get alone. ``CROSS JOIN`` makes SQLite scan the
# few ranges first and look samples up by index (user, metric, time) for each.
_AGGREGATE = """
WITH r(v, user_id, lo, hi, window_start, window_end, bucket_ms, session_start, session_end)
AS (VALUES {values})"""
_RANGE_ROW = (
    "(CAST(:v{i} AS INTEGER), CAST(:u{i} AS VARCHAR(36)), CAST(:lo{i} AS BIGINT), "
    "CAST(:hi{i} AS BIGINT), CAST(:ws{i} AS BIGINT), CAST(:we{i} AS BIGINT), "
    "CAST(:b{i} AS BIGINT), CAST(:ss{i} AS BIGINT), CAST(:se{i} AS BIGINT))"
)
# Above this many ranges per view, neighbouring ones are merged: re-aggregating a clean bucket in
# between gives its row unchanged (see the module docstring), so merging only costs rows, never
# exactness.
MAX_RANGES = 8
_STATEMENTS: dict[tuple[str, int], Prepared] = {}


def _statement(dialect: str, n_ranges: int) -> Prepared:
    statement = _STATEMENTS.get((dialect, n_ranges))
    if statement is None:
        values = ", ".join(_RANGE_ROW.format(i=i) for i in range(n_ranges))
        quantized = _QUANTIZED[dialect].format(scale=SUM_SCALE)
        text = _AGGREGATE.format(values=values) + _GROUPED.format(
            lead="r.v, ",
            r="r",
            ahead=AHEAD,
            quantized=quantized,
            source="r CROSS JOIN health_samples s",
            user="r.user_id",
            metrics=":metrics",
            ordinals="1, 2, 3, 4",
        )
        statement = Prepared(
            sa.text(text).bindparams(sa.bindparam("metrics", expanding=True)), read_only=True
        )
        _STATEMENTS[(dialect, n_ranges)] = statement
    return statement


@dataclass(frozen=True, slots=True)
class RowsWanted:
    """What one view of a batch needs aggregated: ``user_id``'s samples in ``window`` (its whole
    scan when ``ranges`` is None, else only those bucket-aligned ranges of it)."""

    user_id: str
    window: TelemetryWindow
    bucket_ms: int
    ranges: Sequence[tuple[int, int]] | None = None


def session_query(key: TelemetryKey) -> sa.Select[Any]:  # Any: rows of the session columns
    """The select of the key's session row (only the key's user's, when the key names one)."""
    query = sa.select(sessions).where(sessions.c.id == key.session_id)
    if key.user_id:
        query = query.where(sessions.c.user_id == key.user_id)
    return query


def scan_end_ms(window: TelemetryWindow) -> int:
    """Where the scan of ``window`` ends: its end, or nowhere for a live window (samples sent
    ahead of their time are kept as AHEAD rows until the window reaches them)."""
    return OPEN_END_MS if window.live else window.end_ms


def merge_ranges(ranges: Sequence[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """Sorted, disjoint ``[lo, hi)`` ranges, neighbours joined across the smallest gaps until at
    most ``limit`` remain."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    while len(merged) > limit:
        gaps = [merged[i + 1][0] - merged[i][1] for i in range(len(merged) - 1)]
        i = gaps.index(min(gaps))
        merged[i : i + 2] = [(merged[i][0], merged[i + 1][1])]
    return merged


async def aggregate_rows(
    conn: AsyncConnection,
    user_id: str,
    window: TelemetryWindow,
    bucket_ms: int,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> list[Row]:
    """The GROUP BY rows (see ``downsample.Row``) of ``user_id``'s samples in ``window``, or only
    in ``ranges`` of it (bucket-aligned), in no particular order: ``aggregate_many`` of one."""
    return (await aggregate_many(conn, [RowsWanted(user_id, window, bucket_ms, ranges)]))[0]


async def aggregate_many(
    conn: AsyncConnection, wanted: Sequence[RowsWanted], metrics: Sequence[str] = ALL_CODES
) -> list[list[Row]]:
    """The GROUP BY rows of each of ``wanted``, in one statement (none when no view needs a
    row). A live window's rows include the AHEAD rows of samples at or after its end."""
    params: JsonObject = {"metrics": list(metrics)}
    n = 0
    for v, view in enumerate(wanted):
        window = view.window
        scan = [(window.start_ms, scan_end_ms(window))] if view.ranges is None else view.ranges
        session_end = window.end_ms if window.session_end_ms is None else window.session_end_ms
        for lo, hi in merge_ranges(scan, MAX_RANGES):
            params |= {
                f"v{n}": v,
                f"u{n}": view.user_id,
                f"lo{n}": lo,
                f"hi{n}": hi,
                f"ws{n}": window.start_ms,
                f"we{n}": window.end_ms,
                f"b{n}": view.bucket_ms,
                f"ss{n}": window.session_start_ms,
                f"se{n}": session_end,
            }
            n += 1
    rows: list[list[Row]] = [[] for _ in wanted]
    if n == 0:
        return rows
    for row in await _statement(conn.dialect.name, n).rows(conn, params):
        rows[row[0]].append(tuple(row[1:]))
    return rows


@dataclass(frozen=True, slots=True)
class Assembled:
    """A payload before packing: every field but ``metrics``, the metrics, the sample count."""

    document: JsonObject
    metrics: dict[str, JsonObject]
    raw_sample_count: int


def assemble(
    session: Session,
    key: TelemetryKey,
    window: TelemetryWindow,
    series: Mapping[str, MetricSeries],
    now_ms: int,
    *,
    with_insights: bool = True,
) -> Assembled:
    """The payload of ``key`` at ``now_ms`` from each metric's series (``downsample.metric_series``
    of the GROUP BY rows of its window). ``with_insights=False`` only serves the benchmark that
    measures what insights cost."""
    bucket_ms = key.resolution.bucket_ms
    metrics, raw_count = assemble_metrics(series, window, bucket_ms, with_insights=with_insights)
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
    return Assembled(document, metrics, raw_count)


def tail_rows_sql(r: str, user: str) -> str:
    """The GROUP BY rows of the ranges of ``r`` (a relation of the PostgreSQL statement around
    it, with the columns ``_GROUPED`` names) over the samples of ``user`` (an expression), as
    one value: an array of ``downsample.Row`` records, NULL when no sample is in range. The
    claim reads a live view's guessed tail with it (``incremental.guess_tails``)."""
    assert all(code.isidentifier() for code in ALL_CODES)  # written into the SQL as they are
    grouped = _GROUPED.format(
        lead="",
        r=r,
        ahead=AHEAD,
        quantized=_QUANTIZED["postgresql"].format(scale=SUM_SCALE),
        source="health_samples s",
        user=user,
        metrics="(" + ", ".join(f"'{code}'" for code in ALL_CODES) + ")",
        ordinals="1, 2, 3",
    )
    columns = "g.metric, g.bucket, g.phase, g.n, g.total, g.low, g.high, g.first_ms, g.last_ms"
    return f"(SELECT array_agg(ROW({columns})) FROM ({grouped}) g)"
