"""``compute_view``: the compute of one view, incremental whenever the change log proves it may be.

The view's row keeps the GROUP BY rows of its last compute (``partials``). Going from its
watermark ``a`` to the session's ``b``:

1. If the partials were aggregated for the same window (only a live window's end may have grown)
   and the change log holds an unbroken chain of entries from ``a`` to ``b`` with no "whole
   session" among them, the dirty buckets are those the logged time ranges touch, plus, when a
   live window's end grew, those of samples that were ahead of the old end and are inside now.
2. Only the dirty buckets are aggregated again (one GROUP BY restricted to their ranges); their
   rows replace the stored ones, and the whole row set goes through the same assembly a full
   compute uses. A bucket's row depends only on the samples in it (exact sums), so the payload
   is byte-identical to a full compute's. With no dirty bucket (a live tick with nothing new)
   no SQL touches the samples at all.
3. Otherwise the compute is full, and says why (``ComputePath``).

Either way the save is recorded in the view's history (``history``): which buckets and parts it
changed, from the old and new rows and the digests of the old and new parts.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session
from vitalcast.telemetry import history
from vitalcast.telemetry import payload as packing
from vitalcast.telemetry.compute import aggregate_rows, assemble, scan_end_ms
from vitalcast.telemetry.downsample import AHEAD, Row
from vitalcast.telemetry.models import (
    CacheState,
    ComputedTelemetry,
    ComputePath,
    StoredView,
    TelemetryKey,
    TelemetryWindow,
)
from vitalcast.telemetry.partials import Partials, decode, encode


def _stored_partials(stored: StoredView | None) -> Partials | None:
    if stored is None or stored.partials is None or stored.source_watermark is None:
        return None
    try:
        return decode(stored.partials)
    except (ValueError, IndexError, TypeError):
        return None


def _stored_history(stored: StoredView) -> list[history.SaveRecord]:
    try:
        return history.decode(stored.history)
    except ValueError:
        return []


def _same_bounds(old: TelemetryWindow, new: TelemetryWindow) -> bool:
    """The rows of ``old`` stay valid for ``new``: same start, phases and width, and the same end
    unless both are live and the end only grew."""
    if (old.start_ms, old.session_start_ms, old.session_end_ms, old.window_minutes) != (
        new.start_ms,
        new.session_start_ms,
        new.session_end_ms,
        new.window_minutes,
    ):
        return False
    return new.end_ms >= old.end_ms if new.live else new.end_ms == old.end_ms


def _buckets(
    ranges: Iterable[tuple[int, int]], window: TelemetryWindow, bucket_ms: int
) -> set[int]:
    """The buckets of ``window``'s scan that intersect any of the ``[lo, hi)`` time ranges."""
    start, end = window.start_ms, scan_end_ms(window)
    buckets: set[int] = set()
    for lo, hi in ranges:
        lo, hi = max(lo, start), min(hi, end)
        if lo < hi:
            buckets.update(range((lo - start) // bucket_ms, (hi - 1 - start) // bucket_ms + 1))
    return buckets


def _bucket_ranges(
    buckets: set[int], window: TelemetryWindow, bucket_ms: int
) -> list[tuple[int, int]]:
    """Consecutive dirty buckets as time ranges, clipped to the scan of ``window``."""
    ranges: list[tuple[int, int]] = []
    end = scan_end_ms(window)
    for bucket in sorted(buckets):
        lo = window.start_ms + bucket * bucket_ms
        hi = min(lo + bucket_ms, end)
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return ranges


async def _plan(
    conn: AsyncConnection,
    session: Session,
    window: TelemetryWindow,
    bucket_ms: int,
    previous: Partials | None,
    stored_watermark: int | None,
) -> tuple[ComputePath, set[int]]:
    """How to compute, and for an incremental compute the buckets to aggregate again."""
    if previous is None or stored_watermark is None:
        return ComputePath.FULL_NO_PARTIALS, set()
    entries = await changelog.chain(
        conn, session.id, after_seq=stored_watermark, through_seq=session.source_watermark
    )
    if entries is None:
        return ComputePath.FULL_LOG_HOLE, set()
    if any(entry.whole for entry in entries):
        return ComputePath.FULL_WHOLE_SESSION, set()
    if previous.bucket_ms != bucket_ms or not _same_bounds(previous.window, window):
        return ComputePath.FULL_BOUNDS_MOVED, set()
    dirty: set[int] = set()
    for entry in entries:
        dirty |= _buckets(entry.ranges or (), window, bucket_ms)
    if window.live and window.end_ms > previous.window.end_ms:
        # Samples sent ahead of their time were aggregated as AHEAD rows; those the end reached
        # now belong to the window (no new change says so: they were logged long ago).
        dirty.update(row[1] for row in previous.rows if row[2] == AHEAD and row[7] < window.end_ms)
    return ComputePath.INCREMENTAL, dirty


async def compute_view(
    conn: AsyncConnection,
    session: Session,
    key: TelemetryKey,
    now_ms: int,
    stored: StoredView | None,
) -> ComputedTelemetry:
    """The payload of ``key`` for ``session`` (whose watermark was read first) at ``now_ms``,
    from ``stored`` (what the view's row holds) where the change log allows. ``stored`` None
    means the view has no payload yet: the compute is full and its history starts here."""
    bucket_ms = key.resolution.bucket_ms
    window = TelemetryWindow.of(
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=key.window_minutes,
        bucket_ms=bucket_ms,
        now_ms=now_ms,
    )
    previous = _stored_partials(stored)
    path, dirty = await _plan(
        conn,
        session,
        window,
        bucket_ms,
        previous,
        None if stored is None else stored.source_watermark,
    )
    rows: list[Row]
    # The rows a save may have changed, old and new (all of them after a full compute).
    replaced: list[Row] = []
    fresh: list[Row] = []
    if path is ComputePath.INCREMENTAL and previous is not None:
        if dirty:
            ranges = _bucket_ranges(dirty, window, bucket_ms)
            fresh = await aggregate_rows(conn, session.user_id, window, bucket_ms, ranges)
        rows = []
        for row in previous.rows:
            (replaced if row[1] in dirty else rows).append(row)
        rows += fresh
    else:
        rows = fresh = await aggregate_rows(conn, session.user_id, window, bucket_ms)
        replaced = list(previous.rows) if previous is not None else []
    assembled = assemble(session, key, window, rows, now_ms)
    digests = history.part_digests(assembled.document, assembled.metrics)

    records: list[history.SaveRecord] = []
    record = None
    if (
        previous is not None
        and stored is not None
        and previous.digests
        and previous.window.start_ms == window.start_ms
        and previous.bucket_ms == bucket_ms
    ):
        records = _stored_history(stored)
        columns = history.changed_columns(
            replaced, fresh, window_start_ms=window.start_ms, bucket_ms=bucket_ms
        )
        record = history.record_save(session.source_watermark, previous.digests, digests, columns)
    if record is None or not records:
        # No save a delta could start from: the history begins again here. When the view never
        # had a payload, nobody can hold an earlier one, and the record says so.
        records = [] if stored is not None else [history.NO_PAYLOAD]
        record = history.SaveRecord(session.source_watermark, frozenset(), {})
        base_watermark = None
        changed = (window.start_ms, window.end_ms)
    else:
        base_watermark = records[-1].watermark
        changed = history.changed_span(record, window.end_ms)
    return ComputedTelemetry(
        state=CacheState.READY if assembled.metrics else CacheState.NO_DATA,
        blob=packing.pack(assembled.document, assembled.metrics),
        source_watermark=session.source_watermark,
        computed_at_ms=now_ms,
        raw_sample_count=assembled.raw_sample_count,
        window=window,
        partials=encode(Partials(window, bucket_ms, rows, digests)),
        history=history.encode(history.append(records, record)),
        path=path,
        changed_from_ms=changed[0],
        changed_to_ms=changed[1],
        base_watermark=base_watermark,
    )
