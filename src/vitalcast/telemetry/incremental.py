"""``compute_view``: the compute of one view, incremental whenever the change log proves it may be.

The view's row keeps the GROUP BY rows of its last compute (``partials``), per metric. Going
from its watermark ``a`` to the session's ``b``:

1. If the partials were aggregated for the same window (only a live window's end may have grown)
   and the change log holds an unbroken chain of entries from ``a`` to ``b`` with no "whole
   session" among them, the dirty buckets are those the logged time ranges touch, plus, when a
   live window's end grew, those of samples that were ahead of the old end and are inside now.
2. Only the dirty buckets are aggregated again (one GROUP BY restricted to their ranges); their
   rows replace the stored ones. A bucket's row depends only on the samples in it (exact sums),
   so the row set is exactly what a full compute would aggregate, and it goes through the same
   assembly: a metric whose rows came back unchanged keeps its ``MetricSeries`` (what its rows
   alone decide), and only what the window's live end decides is computed for every metric. The
   payload is byte-identical to a full compute's. With no dirty bucket (a live tick with
   nothing new) no SQL touches the samples at all.
3. Otherwise the compute is full, and says why (``ComputePath``).

Either way the save is recorded in the view's history (``history``): which buckets and parts it
changed, from the old and new rows and the digests of the old and new parts. What a process
saved last for a view stays decoded in its ``ViewMemo``, so the next update of the view decodes
nothing.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import groupby
from operator import itemgetter

from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session
from vitalcast.telemetry import history
from vitalcast.telemetry import payload as packing
from vitalcast.telemetry.compute import (
    MAX_RANGES,
    aggregate_rows,
    assemble,
    merge_ranges,
    scan_end_ms,
)
from vitalcast.telemetry.downsample import AHEAD, MetricSeries, Row, metric_series
from vitalcast.telemetry.models import (
    CacheState,
    ComputedTelemetry,
    ComputePath,
    StoredView,
    TelemetryKey,
    TelemetryWindow,
)
from vitalcast.telemetry.partials import ROW_ORDER, MetricRows, Partials, decode, encode, sealed

#: views a process keeps decoded (``ViewMemo``): a live 24-hour view takes about 1 MB, a 1-hour
#: one a few hundred kB
MEMO_VIEWS = 256


@dataclass(frozen=True, slots=True)
class _Remembered:
    blob: bytes
    partials: Partials
    series: Mapping[str, MetricSeries]
    history_blob: bytes
    #: each record of the history with its stored bytes
    history: Sequence[tuple[history.SaveRecord, bytes]]


class ViewMemo:
    """What this process saved last for each of its recent views (a result enters once its save
    succeeded, see ``ComputedTelemetry.on_saved``): the partials and save history decoded, and
    each metric's series. The next compute of the view then decodes nothing and walks only the
    rows of the metrics it changed. An entry serves only when the view's stored partials and
    history are byte for byte the ones it was made from, so a save by another process or a crash
    simply misses it and the compute decodes what is stored. One compute per view at a time (the
    lease) is all it relies on."""

    def __init__(self, capacity: int = MEMO_VIEWS) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[TelemetryKey, _Remembered] = OrderedDict()
        #: lookups that served, and those that found nothing or other partials
        self.hits = 0
        self.misses = 0

    def get(self, key: TelemetryKey, stored: StoredView) -> _Remembered | None:
        entry = self._entries.get(key)
        if entry is None or entry.blob != stored.partials or entry.history_blob != stored.history:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return entry

    def put(self, key: TelemetryKey, entry: _Remembered) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def copy(self) -> ViewMemo:
        """Another memo holding the same entries (a compute from it leaves this one as it is)."""
        other = ViewMemo(self._capacity)
        other._entries = self._entries.copy()
        return other


#: the memo of this process's computes
MEMO = ViewMemo()
NO_PAYLOAD_BYTES = history.encode_record(history.NO_PAYLOAD)
_ORDER = itemgetter(0, 1, 2)
_BUCKET = itemgetter(1)


def _stored_partials(stored: StoredView | None) -> Partials | None:
    if stored is None or stored.partials is None or stored.source_watermark is None:
        return None
    try:
        return decode(stored.partials)
    except (ValueError, IndexError, TypeError):
        return None


def _stored_history(stored: StoredView) -> list[tuple[history.SaveRecord, bytes]]:
    try:
        records = history.decode(stored.history)
    except ValueError:
        return []
    return [(record, history.encode_record(record)) for record in records]


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


def _query_ranges(
    buckets: set[int], window: TelemetryWindow, bucket_ms: int
) -> list[tuple[int, int]]:
    """The time ranges one GROUP BY aggregates again: consecutive dirty buckets joined, clipped to
    the scan of ``window``, and neighbours merged down to ``MAX_RANGES`` (a clean bucket caught in
    between comes back unchanged, see ``compute``)."""
    ranges: list[tuple[int, int]] = []
    end = scan_end_ms(window)
    for bucket in sorted(buckets):
        lo = window.start_ms + bucket * bucket_ms
        hi = min(lo + bucket_ms, end)
        if ranges and ranges[-1][1] == lo:
            ranges[-1] = (ranges[-1][0], hi)
        else:
            ranges.append((lo, hi))
    return merge_ranges(ranges, MAX_RANGES)


def _split(rows: Sequence[Row], spans: Sequence[tuple[int, int]]) -> tuple[list[Row], list[Row]]:
    """``rows`` (sorted by bucket) outside and inside the ``[lo, hi)`` bucket spans (sorted)."""
    kept: list[Row] = []
    dropped: list[Row] = []
    at = 0
    for lo, hi in spans:
        i = bisect_left(rows, lo, lo=at, key=_BUCKET)
        j = bisect_left(rows, hi, lo=i, key=_BUCKET)
        kept += rows[at:i]
        dropped += rows[i:j]
        at = j
    kept += rows[at:]
    return kept, dropped


@dataclass(frozen=True, slots=True)
class _Merged:
    metrics: dict[str, MetricRows]
    series: dict[str, MetricSeries]
    #: the rows the merge took out and put in, of the metrics it changed
    replaced: list[Row]
    fresh: list[Row]


def _add_series(
    merged: _Merged, code: str, rows: Sequence[Row], origin_ms: int, bucket_ms: int
) -> None:
    """The series of ``code``'s rows into ``merged`` (none for a metric without a row in the
    window or outside the catalog)."""
    series = metric_series(code, rows, origin_ms, bucket_ms)
    if series is not None:
        merged.series[code] = series


def _merge(
    previous: Partials,
    known: Mapping[str, MetricSeries],
    fresh: Iterable[Row],
    ranges: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> _Merged:
    """``previous`` with the rows of the time ``ranges`` replaced by ``fresh`` (what the GROUP BY
    over those ranges returned). A metric whose rows come back the same keeps its stored segment
    and, from ``known``, its series: only the metrics that changed are walked again."""
    start = window.start_ms
    spans = [((lo - start) // bucket_ms, (hi - 1 - start) // bucket_ms + 1) for lo, hi in ranges]
    incoming = {
        code: list(rows) for code, rows in groupby(sorted(fresh, key=_ORDER), key=itemgetter(0))
    }
    merged = _Merged({}, {}, [], [])
    for code in sorted(previous.metrics.keys() | incoming.keys()):
        old = previous.metrics.get(code)
        new = incoming.get(code, [])
        kept, dropped = _split(old.rows if old is not None else (), spans)
        if old is not None and dropped == new:
            merged.metrics[code] = old
            series = known.get(code)
            if series is None:
                _add_series(merged, code, old.rows, start, bucket_ms)
            else:
                merged.series[code] = series
            continue
        rows = sorted(kept + new, key=ROW_ORDER)
        merged.metrics[code] = MetricRows(rows)
        _add_series(merged, code, rows, start, bucket_ms)
        merged.replaced.extend(dropped)
        merged.fresh.extend(new)
    return merged


def _ahead_reached(previous: Partials, end_ms: int) -> set[int]:
    """Buckets of AHEAD rows (samples at or after ``previous``'s end) that ``end_ms`` reached."""
    window = previous.window
    first = (window.end_ms - window.start_ms) // previous.bucket_ms
    buckets: set[int] = set()
    for metric in previous.metrics.values():
        rows = metric.rows
        for row in rows[bisect_left(rows, first, key=_BUCKET) :]:
            if row[2] == AHEAD and row[7] < end_ms:
                buckets.add(row[1])
    return buckets


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
        dirty.update(_ahead_reached(previous, window.end_ms))
    return ComputePath.INCREMENTAL, dirty


async def compute_view(
    conn: AsyncConnection,
    session: Session,
    key: TelemetryKey,
    now_ms: int,
    stored: StoredView | None,
    *,
    memo: ViewMemo | None = MEMO,
) -> ComputedTelemetry:
    """The payload of ``key`` for ``session`` (whose watermark was read first) at ``now_ms``,
    from ``stored`` (what the view's row holds) where the change log allows. ``stored`` None
    means the view has no payload yet: the compute is full and its history starts here.
    ``memo`` None decodes the stored partials every time (tests compare both ways)."""
    bucket_ms = key.resolution.bucket_ms
    window = TelemetryWindow.of(
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=key.window_minutes,
        bucket_ms=bucket_ms,
        now_ms=now_ms,
    )
    remembered = None
    if memo is not None and stored is not None and stored.source_watermark is not None:
        remembered = memo.get(key, stored)
    previous = remembered.partials if remembered else _stored_partials(stored)
    known = remembered.series if remembered else {}
    path, dirty = await _plan(
        conn,
        session,
        window,
        bucket_ms,
        previous,
        None if stored is None else stored.source_watermark,
    )
    if path is ComputePath.INCREMENTAL and previous is not None:
        ranges = _query_ranges(dirty, window, bucket_ms)
        fresh = await aggregate_rows(conn, session.user_id, window, bucket_ms, ranges)
        merged = _merge(previous, known, fresh, ranges, window, bucket_ms)
    else:
        rows = await aggregate_rows(conn, session.user_id, window, bucket_ms)
        metrics = dict(Partials.of_rows(window, bucket_ms, rows).metrics)
        replaced = previous.rows if previous is not None else []
        merged = _Merged(metrics, {}, replaced, rows)
        for code, metric in metrics.items():
            _add_series(merged, code, metric.rows, window.start_ms, bucket_ms)
    assembled = assemble(session, key, window, merged.series, now_ms)
    digests = history.part_digests(assembled.document, assembled.metrics)

    records: list[tuple[history.SaveRecord, bytes]] = []
    record = None
    if (
        previous is not None
        and stored is not None
        and previous.digests
        and previous.window.start_ms == window.start_ms
        and previous.bucket_ms == bucket_ms
    ):
        records = list(remembered.history) if remembered else _stored_history(stored)
        columns_changed = history.changed_columns(
            merged.replaced, merged.fresh, window_start_ms=window.start_ms, bucket_ms=bucket_ms
        )
        record = history.record_save(
            session.source_watermark, previous.digests, digests, columns_changed
        )
    if record is None or not records:
        # No save a delta could start from: the history begins again here. When the view never
        # had a payload, nobody can hold an earlier one, and the record says so.
        records = [] if stored is not None else [(history.NO_PAYLOAD, NO_PAYLOAD_BYTES)]
        record = history.SaveRecord(session.source_watermark, frozenset(), {})
        base_watermark = None
        changed = (window.start_ms, window.end_ms)
    else:
        base_watermark = records[-1][0].watermark
        changed = history.changed_span(record, window.end_ms)
    partials = sealed(Partials(window, bucket_ms, merged.metrics, digests))
    blob = encode(partials)
    saves = history.append(records, (record, history.encode_record(record)))
    history_blob = history.encode(encoded for _record, encoded in saves)
    return ComputedTelemetry(
        state=CacheState.READY if assembled.metrics else CacheState.NO_DATA,
        blob=packing.pack(assembled.document, assembled.metrics),
        source_watermark=session.source_watermark,
        computed_at_ms=now_ms,
        raw_sample_count=assembled.raw_sample_count,
        window=window,
        partials=blob,
        history=history_blob,
        path=path,
        changed_from_ms=changed[0],
        changed_to_ms=changed[1],
        base_watermark=base_watermark,
        on_saved=None
        if memo is None
        else partial(
            memo.put, key, _Remembered(blob, partials, merged.series, history_blob, saves)
        ),
    )
