"""The merge of an incremental compute: the stored bucket rows with the dirty ranges replaced by
what one GROUP BY over those ranges returned, and the series of the metrics that changed."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter

from vitalcast.telemetry.compute.aggregate import MAX_RANGES, merge_ranges, scan_end_ms
from vitalcast.telemetry.compute.downsample import MetricSeries, Row, metric_series
from vitalcast.telemetry.compute.partials import ROW_ORDER, MetricRows, Partials
from vitalcast.telemetry.grid import TelemetryWindow

_ORDER = itemgetter(0, 1, 2)
_BUCKET = itemgetter(1)


def query_ranges(
    buckets: set[int], window: TelemetryWindow, bucket_ms: int
) -> list[tuple[int, int]]:
    """The time ranges one GROUP BY aggregates again: consecutive dirty buckets joined, clipped to
    the scan of ``window``, and neighbours merged down to ``MAX_RANGES`` (a clean bucket caught in
    between comes back unchanged, see ``aggregate``)."""
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
class Merged:
    metrics: dict[str, MetricRows]
    series: dict[str, MetricSeries]
    #: the rows the merge took out and put in, of the metrics it changed
    replaced: list[Row]
    fresh: list[Row]


def add_series(
    merged: Merged, code: str, rows: Sequence[Row], origin_ms: int, bucket_ms: int
) -> None:
    """The series of ``code``'s rows into ``merged`` (none for a metric without a row in the
    window or outside the catalog)."""
    series = metric_series(code, rows, origin_ms, bucket_ms)
    if series is not None:
        merged.series[code] = series


def merge(
    previous: Partials,
    known: Mapping[str, MetricSeries],
    fresh: Iterable[Row],
    ranges: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> Merged:
    """``previous`` with the rows of the time ``ranges`` replaced by ``fresh`` (what the GROUP BY
    over those ranges returned). A metric whose rows come back the same keeps its stored segment
    and, from ``known``, its series: only the metrics that changed are walked again."""
    start = window.start_ms
    spans = [((lo - start) // bucket_ms, (hi - 1 - start) // bucket_ms + 1) for lo, hi in ranges]
    incoming = {
        code: list(rows) for code, rows in groupby(sorted(fresh, key=_ORDER), key=itemgetter(0))
    }
    merged = Merged({}, {}, [], [])
    for code in sorted(previous.metrics.keys() | incoming.keys()):
        old = previous.metrics.get(code)
        new = incoming.get(code, [])
        kept, dropped = _split(old.rows if old is not None else (), spans)
        if old is not None and dropped == new:
            merged.metrics[code] = old
            series = known.get(code)
            if series is None:
                add_series(merged, code, old.rows, start, bucket_ms)
            else:
                merged.series[code] = series
            continue
        rows = sorted(kept + new, key=ROW_ORDER)
        merged.metrics[code] = MetricRows(rows)
        add_series(merged, code, rows, start, bucket_ms)
        merged.replaced.extend(dropped)
        merged.fresh.extend(new)
    return merged
