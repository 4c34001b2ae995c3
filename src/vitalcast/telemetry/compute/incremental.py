"""``compute_views``: the compute of a batch of views, each incremental whenever the change log
proves it may be (``compute_view`` is a batch of one).

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

A batch reads the change logs of all its views in one statement and runs one GROUP BY over the
ranges of all of them (``aggregate.aggregate_many``), but those of the views whose rows the
claim already read with a guessed tail (``guess_tails``, PostgreSQL); a view's rows are the ones
it would get alone, so a batch is byte for byte its views computed one by one. Then each view is
merged and assembled on its own, and a view whose assembly raises fails alone.

Either way the save is recorded in the view's history (``history``): which buckets and parts it
changed, from the old and new rows and the digests of the old and new parts. What a process
saved last for a view stays decoded in its ``ViewMemo``, so the next update of the view decodes
nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from sqlalchemy.ext.asyncio import AsyncConnection

from vitalcast.db.engine import Database
from vitalcast.json_types import JsonMapping
from vitalcast.sessions import changelog
from vitalcast.sessions.models import Session
from vitalcast.telemetry.compute import changes, history
from vitalcast.telemetry.compute import payload as packing
from vitalcast.telemetry.compute.aggregate import (
    Assembled,
    RowsWanted,
    aggregate_many,
    assemble,
    scan_end_ms,
)
from vitalcast.telemetry.compute.downsample import BUCKET, MetricSeries, Row
from vitalcast.telemetry.compute.memo import RememberedView, ViewMemo
from vitalcast.telemetry.compute.merge import Merged, add_series, merge, query_ranges
from vitalcast.telemetry.compute.partials import Partials, decode, encode, sealed
from vitalcast.telemetry.compute.plan import plan
from vitalcast.telemetry.compute.results import ComputedTelemetry, ComputePath, StoredView, Tail
from vitalcast.telemetry.grid import TelemetryWindow
from vitalcast.telemetry.keys import CacheState, TelemetryKey
from vitalcast.telemetry.ports import AlertEpisode

NO_PAYLOAD_BYTES = history.encode_record(history.NO_PAYLOAD)


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


@dataclass(frozen=True, slots=True)
class ViewInput:
    """One view of a batch: its session (whose watermark was read with the claim), its key, the
    time it is computed at, and what its row holds (None: no payload yet)."""

    session: Session
    key: TelemetryKey
    now_ms: int
    stored: StoredView | None


@dataclass(frozen=True, slots=True)
class BatchComputed:
    """Each view's result, in the order of the inputs (an exception: that view failed alone),
    and the seconds the batch spent per stage: the change-log read ("read"), the GROUP BY (of
    the views the claim's tails did not answer) and the merges ("aggregate"), assembling and
    packing ("assemble")."""

    results: list[ComputedTelemetry | Exception]
    stage_seconds: dict[str, float]


#: the compute seam: (the database, what a batch's read found) → its results (``assemble_batch``).
#: Its read ran in the unit of work that took the batch's leases, so a seam runs with the leases
#: held: tests and the fault suite wrap ``assemble_batch`` to hold or fail a batch.
Aggregator = Callable[[Database, "BatchRead"], Awaitable[BatchComputed]]
#: the assembly of one view (``aggregate.assemble``); a seam so a test can poison one view
Assembler = Callable[
    [Session, TelemetryKey, TelemetryWindow, Mapping[str, MetricSeries], int], Assembled
]


@dataclass(slots=True)
class _Planned:
    view: ViewInput
    window: TelemetryWindow
    remembered: RememberedView | None
    previous: Partials | None
    path: ComputePath = ComputePath.FULL_NO_PARTIALS
    #: the ranges of an incremental compute's GROUP BY (None: the whole window)
    ranges: list[tuple[int, int]] | None = None


def _prepare(view: ViewInput, memo: ViewMemo | None) -> _Planned:
    session, key, stored = view.session, view.key, view.stored
    window = TelemetryWindow.of(
        start_ms=session.start_ms,
        end_ms=session.end_ms,
        live=session.live,
        window_minutes=key.window_minutes,
        bucket_ms=key.resolution.bucket_ms,
        now_ms=view.now_ms,
    )
    remembered = None
    if memo is not None and stored is not None and stored.source_watermark is not None:
        remembered = memo.get(key, stored)
    previous = remembered.partials if remembered else _stored_partials(stored)
    return _Planned(view, window, remembered, previous)


#: how far before a live view's last live edge the samples of its next update may start and still
#: be in its guessed tail (``guess_tails``): a live stream's sync carries the seconds since the one
#: before, whose compute set that edge
TAIL_LAG_MS = 60_000


def guess_tails(
    keys: Sequence[TelemetryKey], memo: ViewMemo | None, now_ms: int
) -> dict[TelemetryKey, Tail]:
    """Before their claim: for each view this process last saved live, the tail a compute of it
    at ``now_ms`` will most likely aggregate, from its last live edge (less ``TAIL_LAG_MS``) on.
    The claim reads the tail's GROUP BY rows (PostgreSQL: in the same statement), and a compute
    whose planned ranges lie inside the tail takes its rows from them instead of a GROUP BY of
    its own: a live update then costs one round trip less. The plan (``plan``) still decides
    what is aggregated; a wrong guess costs the tail's rows and the GROUP BY it would have run."""
    tails: dict[TelemetryKey, Tail] = {}
    if memo is None:
        return tails
    for key in keys:
        previous = memo.last_partials(key)
        bucket_ms = key.resolution.bucket_ms
        if previous is None or not previous.window.live or previous.bucket_ms != bucket_ms:
            continue
        window = TelemetryWindow.of(
            start_ms=previous.window.session_start_ms,
            end_ms=None,
            live=True,
            window_minutes=key.window_minutes,
            bucket_ms=bucket_ms,
            now_ms=now_ms,
        )
        edge = max(previous.window.end_ms - TAIL_LAG_MS, window.start_ms)
        lo = window.start_ms + (edge - window.start_ms) // bucket_ms * bucket_ms
        tails[key] = Tail(window, bucket_ms, lo, scan_end_ms(window))
    return tails


def _from_tail(p: _Planned) -> list[Row] | None:
    """The view's GROUP BY rows taken from the tail its claim read, when its planned ranges lie
    inside that tail on the same grid; None: the view needs a GROUP BY. The tail's range and
    the planned ones start on bucket bounds, so a bucket's row there holds every sample of the
    bucket, as the GROUP BY of the planned ranges gives it (``aggregate``)."""
    stored, ranges = p.view.stored, p.ranges
    if stored is None or stored.tail is None or ranges is None:
        return None
    tail = stored.tail.tail
    if tail.window != p.window or tail.bucket_ms != p.view.key.resolution.bucket_ms:
        return None
    if any(lo < tail.lo or hi > tail.hi for lo, hi in ranges):
        return None
    start, bucket_ms = p.window.start_ms, tail.bucket_ms
    return [
        row
        for row in stored.tail.rows
        if any(lo <= start + row[BUCKET] * bucket_ms < hi for lo, hi in ranges)
    ]


#: the most time, summed over a batch's ranges, whose GROUP BY a read in the claim's unit of work
#: runs (``read_views``): a live update's view scans a bucket or two (1 or 5 minutes). A longer
#: one (full computes, a big batch) runs in a read unit of its own, so a SQLite writer does not
#: hold the write lock across a long scan, and a big batch's third unit is shared by its views.
FOLDED_SPAN_MS = 60 * 60_000


@dataclass(frozen=True, slots=True)
class BatchRead:
    """What a batch's read found: each view's plan and its GROUP BY rows (a view's None: its
    GROUP BY is still to run, see ``FOLDED_SPAN_MS``), the seconds of the change-log read and of
    the GROUP BY, and the memo the plans were made from, which the assembly then fills (a read and
    its assembly cannot disagree on it: with two memos every read decoded stored partials)."""

    planned: list[_Planned]
    rows: list[list[Row] | None]
    read_s: float
    aggregate_s: float
    memo: ViewMemo | None


async def compute_views(
    conn: AsyncConnection,
    views: Sequence[ViewInput],
    *,
    memo: ViewMemo | None = None,
    assembler: Assembler = assemble,
) -> BatchComputed:
    """The payloads of ``views``, each from its stored partials where the change log allows:
    one read of the change logs of all of them, one GROUP BY over every range any of them needs,
    then each view merged and assembled on its own (a view whose assembly raises fails alone).
    ``memo`` None decodes the stored partials every time (tests compare both ways); a process's
    computer passes the memo ``wiring`` built for it."""
    read = await read_views(conn, views, memo=memo, folded_span_ms=None)
    rows = await _fill(conn, read.planned, read.rows)
    return _assemble(read.planned, rows, read.read_s, read.aggregate_s, read.memo, assembler)


async def compute_batch_views(
    db: Database,
    views: Sequence[ViewInput],
    *,
    memo: ViewMemo | None = None,
    assembler: Assembler = assemble,
) -> BatchComputed:
    """``compute_views`` with its read as one unit of work (on SQLite: one hop to a database
    thread) and the assembly on this loop. For callers that hold no lease (benchmarks, tests);
    ``TelemetryComputer`` reads in the unit that claims its leases, then ``assemble_batch``."""
    read = await db.unit(lambda conn: read_views(conn, views, memo=memo, folded_span_ms=None))
    return await assemble_batch(db, read, assembler=assembler)


async def read_views(
    conn: AsyncConnection,
    views: Sequence[ViewInput],
    *,
    memo: ViewMemo | None = None,
    folded_span_ms: int | None = FOLDED_SPAN_MS,
) -> BatchRead:
    """The read of a batch, in the caller's transaction: the change logs of all ``views`` (one
    statement, none when the claim read them) and, when the dirty ranges of the views their
    claim's tails do not answer (``guess_tails``) add up to at most ``folded_span_ms`` (None:
    always), the one GROUP BY over those. A live update's GROUP BY is a few buckets: it costs
    less than the unit of work a GROUP BY of its own would take."""
    started = time.perf_counter()
    planned = [_prepare(view, memo) for view in views]
    spans: list[changelog.Span] = []
    asking: list[_Planned] = []
    walked: list[tuple[_Planned, list[changelog.LogEntry] | None]] = []
    for p in planned:
        stored = p.view.stored
        if p.previous is not None and stored is not None and stored.source_watermark is not None:
            span = (p.view.session.id, stored.source_watermark, p.view.session.source_watermark)
            if stored.log is not None:
                # read with the claim: no statement of its own
                walked.append((p, changelog.walk(stored.log, *span)))
            else:
                spans.append(span)
                asking.append(p)
    if spans:
        walked += zip(asking, await changelog.chains(conn, spans), strict=True)
    for p, entries in walked:
        bucket_ms = p.view.key.resolution.bucket_ms
        p.path, dirty = plan(p.window, bucket_ms, p.previous, entries)
        if p.path is ComputePath.INCREMENTAL:
            p.ranges = query_ranges(dirty, p.window, bucket_ms)
    rows = [_from_tail(p) for p in planned]
    read_s = time.perf_counter() - started
    rest = [p for p, found in zip(planned, rows, strict=True) if found is None]
    if not rest or (folded_span_ms is not None and _span_ms(rest) > folded_span_ms):
        return BatchRead(planned, rows, read_s, 0.0, memo)
    aggregating = time.perf_counter()
    filled: list[list[Row] | None] = list(await _fill(conn, planned, rows))
    return BatchRead(planned, filled, read_s, time.perf_counter() - aggregating, memo)


def _span_ms(planned: Sequence[_Planned]) -> int:
    """The time a batch's GROUP BY scans, summed over its views (a full compute: its window)."""
    total = 0
    for p in planned:
        if p.ranges is None:
            total += p.window.end_ms - p.window.start_ms
        else:
            total += sum(hi - lo for lo, hi in p.ranges)
    return total


async def _fill(
    conn: AsyncConnection, planned: Sequence[_Planned], rows: Sequence[list[Row] | None]
) -> list[list[Row]]:
    """``rows`` with the GROUP BY of the views that have none yet (one statement, none when
    every view has its rows)."""
    missing = [p for p, found in zip(planned, rows, strict=True) if found is None]
    aggregated = iter(await _group_by(conn, missing) if missing else [])
    return [found if found is not None else next(aggregated) for found in rows]


async def _group_by(conn: AsyncConnection, planned: Sequence[_Planned]) -> list[list[Row]]:
    return await aggregate_many(
        conn,
        [
            RowsWanted(p.view.session.user_id, p.window, p.view.key.resolution.bucket_ms, p.ranges)
            for p in planned
        ],
    )


async def assemble_batch(
    db: Database,
    read: BatchRead,
    *,
    assembler: Assembler = assemble,
) -> BatchComputed:
    """The results of a batch ``read`` found: its GROUP BY first when the read left it (one read
    unit of work), then each view merged and assembled on this loop, remembered in the read's
    memo (assembling and packing in a
    database thread held the GIL against the loop, and under a burst the loop fell so far behind
    that Socket.IO clients were dropped). The default compute seam."""
    planned, found, aggregate_s = read.planned, read.rows, read.aggregate_s
    if any(r is None for r in found):
        aggregating = time.perf_counter()
        rows = await db.unit(lambda conn: _fill(conn, planned, found))
        aggregate_s = time.perf_counter() - aggregating
    else:
        rows = [r for r in found if r is not None]
    return _assemble(planned, rows, read.read_s, aggregate_s, read.memo, assembler)


def _assemble(
    planned: Sequence[_Planned],
    rows: Sequence[list[Row]],
    read_s: float,
    aggregate_s: float,
    memo: ViewMemo | None,
    assembler: Assembler,
) -> BatchComputed:
    queried = time.perf_counter()
    results: list[ComputedTelemetry | Exception] = []
    merging = 0.0
    for p, fresh in zip(planned, rows, strict=True):
        try:
            merged, assembled, took = _merge_and_assemble(p, fresh, assembler)
            results.append(_finish(p, merged, assembled, memo))
        except Exception as exc:
            results.append(exc)
            continue
        merging += took[0]
    return BatchComputed(
        results,
        {
            "read": read_s,
            "aggregate": aggregate_s + merging,
            "assemble": time.perf_counter() - queried - merging,
        },
    )


def _merge_and_assemble(
    p: _Planned, fresh: list[Row], assembler: Assembler
) -> tuple[Merged, Assembled, tuple[float, float]]:
    started = time.perf_counter()
    view, window = p.view, p.window
    bucket_ms = view.key.resolution.bucket_ms
    if p.ranges is not None and p.previous is not None:
        known = p.remembered.series if p.remembered else {}
        merged = merge(p.previous, known, fresh, p.ranges, window, bucket_ms)
    else:
        metrics = dict(Partials.of_rows(window, bucket_ms, fresh).metrics)
        replaced = p.previous.rows if p.previous is not None else []
        merged = Merged(metrics, {}, replaced, fresh)
        for code, metric in metrics.items():
            add_series(merged, code, metric.rows, window.start_ms, bucket_ms)
    mid = time.perf_counter()
    assembled = assembler(view.session, view.key, window, merged.series, view.now_ms)
    return merged, assembled, (mid - started, time.perf_counter() - mid)


def _finish(
    p: _Planned, merged: Merged, assembled: Assembled, memo: ViewMemo | None
) -> ComputedTelemetry:
    """The saved form of one view: partials, history record, packed payload."""
    view, window, previous, remembered = p.view, p.window, p.previous, p.remembered
    session, key, stored, now_ms = view.session, view.key, view.stored, view.now_ms
    bucket_ms = key.resolution.bucket_ms
    digests = changes.part_digests(assembled.document, assembled.metrics)
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
        columns_changed = changes.changed_columns(
            merged.replaced, merged.fresh, window_start_ms=window.start_ms, bucket_ms=bucket_ms
        )
        record = changes.record_save(
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
        changed = changes.changed_span(record, window.end_ms)
    partials = sealed(Partials(window, bucket_ms, merged.metrics, digests))
    blob = encode(partials)
    saves = history.append(records, (record, history.encode_record(record)))
    history_blob = history.encode(encoded for _record, encoded in saves)
    packed = packing.pack(assembled.document, assembled.metrics)
    return ComputedTelemetry(
        state=CacheState.READY if assembled.metrics else CacheState.NO_DATA,
        blob=packed,
        source_watermark=session.source_watermark,
        computed_at_ms=now_ms,
        raw_sample_count=assembled.raw_sample_count,
        window=window,
        partials=blob,
        history=history_blob,
        path=p.path,
        changed_from_ms=changed[0],
        changed_to_ms=changed[1],
        base_watermark=base_watermark,
        on_saved=None
        if memo is None
        else partial(
            memo.put, key, RememberedView(blob, partials, merged.series, history_blob, saves)
        ),
        episodes=episodes_of(assembled.metrics),
    )


async def compute_view(
    conn: AsyncConnection,
    session: Session,
    key: TelemetryKey,
    now_ms: int,
    stored: StoredView | None,
    *,
    memo: ViewMemo | None = None,
) -> ComputedTelemetry:
    """The payload of one view: ``compute_views`` of one (its failure raised). ``stored`` None
    means the view has no payload yet: the compute is full and its history starts here."""
    result = await compute_views(conn, [ViewInput(session, key, now_ms, stored)], memo=memo)
    computed = result.results[0]
    if isinstance(computed, Exception):
        raise computed
    return computed


def episodes_of(metrics: Mapping[str, JsonMapping]) -> tuple[AlertEpisode, ...]:
    """Every metric's alert episodes, as the payload holds them (``insights.episodes``)."""
    found: list[AlertEpisode] = []
    for code, metric in metrics.items():
        insights = metric.get("insights")
        if not insights:
            continue
        for episode in insights.get("episodes") or ():
            found.append(
                AlertEpisode(
                    metric=code,
                    rule=episode["rule"],
                    level=episode["level"],
                    start_ms=int(episode["start_ms"]),
                    end_ms=int(episode["end_ms"]),
                    extreme=float(episode["extreme"]),
                )
            )
    return tuple(found)
