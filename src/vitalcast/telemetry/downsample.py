"""Pure assembly of the payload's metric series from the rows of the one GROUP BY; no I/O.

Input rows are ``(metric, bucket, phase, count, sum, min, max, first_ms, last_ms)``, one per
(metric, bucket, phase) that holds at least one sample, in any order; ``sum`` is an exact integer
of micro-units (``SUM_SCALE``), so every sum and mean below is exact until its one final,
correctly rounded division, whatever order rows and samples came in. A bucket
that straddles the session start or end arrives as two or three rows: merged by bucket they give
the series, merged by phase they give exact phase statistics.

Gaps are exact without the raw timestamps: two consecutive samples inside one bucket are less
than ``bucket_ms`` apart and the threshold is at least twice that, so a gap can only lie between
the last sample of a non-empty bucket and the first sample of the next non-empty one.

A scalar phase's coverage is time, not buckets: the share of the phase's duration that lies
outside every gap. A metric sampled every 5 minutes with a 10-minute threshold and no dropout is
fully covered although four of five 1-minute buckets are empty. Cumulative metrics have no gaps
and so no coverage.

Each metric also carries its ``insights`` (``telemetry/insights.py``), computed here from the same
rows, so whoever assembles a payload from these rows gets them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from typing import Any

from vitalcast.catalog import BY_CODE, Metric, MetricKind
from vitalcast.telemetry.insights import Part, cumulative_insights, scalar_insights
from vitalcast.telemetry.models import TelemetryWindow

#: phase numbers as the aggregate query computes them
BEFORE, DURING, AFTER = 0, 1, 2
PHASE_NAMES = ("before", "during", "after")
#: the "phase" of samples at or after a live window's end: kept with the partials, never shown
AHEAD = 3
#: row sums are integers of values rounded to micro-units, far below any sensor's precision; a
#: (metric, bucket, phase) holds at most 9.2 × 10^12 units (2^63 micro-units)
SUM_SCALE = 1_000_000

# (metric, bucket, phase, count, sum in micro-units, min, max, first_ms, last_ms)
Row = tuple[str, int, int, int, int, float, float, int, int]
_ORDER = itemgetter(0, 1, 2)


def gap_threshold_ms(metric_gap_ms: int | None, bucket_ms: int) -> int:
    """A gap is strictly longer than this: twice the bucket, or the metric's own threshold."""
    return max(2 * bucket_ms, metric_gap_ms or 0)


def phase_bounds(window: TelemetryWindow) -> tuple[tuple[int, int], ...]:
    """``[lo, hi)`` of before, during and after; a live session has an empty after phase."""
    session_end = window.end_ms if window.session_end_ms is None else window.session_end_ms
    session_start = min(max(window.session_start_ms, window.start_ms), window.end_ms)
    session_end = min(max(session_end, session_start), window.end_ms)
    return (
        (window.start_ms, session_start),
        (session_start, session_end),
        (session_end, window.end_ms),
    )


def coverage(lo: int, hi: int, gaps: Sequence[dict[str, int]]) -> float | None:
    """Share of ``[lo, hi)`` outside every gap; None for an empty phase (no time to cover)."""
    if hi <= lo:
        return None
    uncovered = sum(max(0, min(gap["end_ms"], hi) - max(gap["start_ms"], lo)) for gap in gaps)
    return (hi - lo - uncovered) / (hi - lo)


def build_metrics(
    rows: Iterable[Row], window: TelemetryWindow, bucket_ms: int, *, with_insights: bool = True
) -> tuple[dict[str, dict[str, Any]], int]:
    """The payload's ``metrics`` map (only metrics with samples) and the raw sample count.

    ``with_insights=False`` leaves each metric's ``insights`` out; only the benchmark does, to
    measure what they cost (bench/telemetry.py)."""
    return assemble_metrics(columns_of(rows), window, bucket_ms, with_insights=with_insights)


def columns_of(rows: Iterable[Row]) -> dict[str, MetricColumns]:
    """Each metric's columns from GROUP BY rows in any order."""
    return {
        code: metric_columns(metric_rows)
        for code, metric_rows in groupby(sorted(rows, key=_ORDER), key=itemgetter(0))
    }


def assemble_metrics(
    columns: Mapping[str, MetricColumns],
    window: TelemetryWindow,
    bucket_ms: int,
    *,
    with_insights: bool = True,
) -> tuple[dict[str, dict[str, Any]], int]:
    """``build_metrics`` from each metric's columns: only what depends on the window (its live
    end above all) is computed here, so an incremental compute can run it for every metric and
    walk the rows of the metrics it changed alone."""
    phases = phase_bounds(window)
    metrics: dict[str, dict[str, Any]] = {}
    total = 0
    for code in sorted(columns):
        metric = BY_CODE.get(code)
        merged = columns[code]
        if metric is None or not merged.buckets:
            continue
        series = _metric_series(
            merged,
            cumulative=metric.kind is MetricKind.CUMULATIVE,
            window=window,
            bucket_ms=bucket_ms,
            threshold_ms=gap_threshold_ms(metric.gap_threshold_ms, bucket_ms),
            phases=phases,
        )
        if with_insights:
            series["insights"] = _insights(metric, merged, series, phases, window, bucket_ms)
        total += series["stats"]["count"]
        metrics[code] = {
            "display_name": metric.display_name,
            "unit": metric.unit,
            "kind": metric.kind.value,
            **series,
        }
    return metrics, total


@dataclass(frozen=True, slots=True)
class MetricColumns:
    """One metric's rows merged by bucket (the series' columns) and by phase: everything of its
    assembly that depends on its rows alone. Never mutated once built: an incremental compute
    hands the columns of a metric whose rows did not change to the next assembly as they are."""

    buckets: list[int]
    counts: list[int]
    sums: list[int]
    lows: list[float]
    highs: list[float]
    firsts: list[int]
    lasts: list[int]
    #: per phase (before, during, after): count, sum, min, max
    p_count: tuple[int, int, int]
    p_sum: tuple[int, int, int]
    p_low: tuple[float | None, float | None, float | None]
    p_high: tuple[float | None, float | None, float | None]
    #: bucket number → (count, sum in the metric's unit) of its during and after samples
    during: dict[int, Part]
    after: dict[int, Part]


def metric_columns(rows: Iterable[Row]) -> MetricColumns:
    """The columns of one metric's rows, sorted by (bucket, phase); AHEAD rows are skipped (they
    lie beyond the window's end)."""
    buckets: list[int] = []
    counts: list[int] = []
    sums: list[int] = []
    lows: list[float] = []
    highs: list[float] = []
    firsts: list[int] = []
    lasts: list[int] = []
    p_count = [0, 0, 0]
    p_sum = [0, 0, 0]
    p_low: list[float | None] = [None, None, None]
    p_high: list[float | None] = [None, None, None]
    parts: tuple[dict[int, Part], ...] = ({}, {}, {})
    previous_bucket = -1
    for _code, bucket, phase, count, total, low, high, first, last in rows:
        if phase == AHEAD:
            continue
        total = int(total)
        low = float(low)
        high = float(high)
        p_count[phase] += count
        p_sum[phase] += total
        plow, phigh = p_low[phase], p_high[phase]
        p_low[phase] = low if plow is None or low < plow else plow
        p_high[phase] = high if phigh is None or high > phigh else phigh
        if phase != BEFORE:
            parts[phase][bucket] = (count, total / SUM_SCALE)
        if bucket == previous_bucket:
            counts[-1] += count
            sums[-1] += total
            lows[-1] = min(lows[-1], low)
            highs[-1] = max(highs[-1], high)
            firsts[-1] = min(firsts[-1], first)
            lasts[-1] = max(lasts[-1], last)
            continue
        previous_bucket = bucket
        buckets.append(bucket)
        counts.append(count)
        sums.append(total)
        lows.append(low)
        highs.append(high)
        firsts.append(first)
        lasts.append(last)
    return MetricColumns(
        buckets,
        counts,
        sums,
        lows,
        highs,
        firsts,
        lasts,
        (p_count[0], p_count[1], p_count[2]),
        (p_sum[0], p_sum[1], p_sum[2]),
        (p_low[0], p_low[1], p_low[2]),
        (p_high[0], p_high[1], p_high[2]),
        parts[DURING],
        parts[AFTER],
    )


def _metric_series(
    merged: MetricColumns,
    *,
    cumulative: bool,
    window: TelemetryWindow,
    bucket_ms: int,
    threshold_ms: int,
    phases: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    # Fresh lists: the payload's own, never the columns' (which a later compute may reuse).
    origin = window.start_ms
    t = [origin + bucket * bucket_ms for bucket in merged.buckets]
    counts, sums = list(merged.counts), merged.sums
    p_count, p_sum, p_low, p_high = merged.p_count, merged.p_sum, merged.p_low, merged.p_high
    count_all = sum(p_count)
    sum_all = sum(p_sum)
    if cumulative:
        return {
            "t": t,
            "sum": [s / SUM_SCALE for s in sums],
            "count": counts,
            "gaps": [],
            "stats": {"sum": sum_all / SUM_SCALE, "count": count_all},
            "phases": {
                name: {"sum": p_sum[index] / SUM_SCALE, "count": p_count[index]}
                for index, name in enumerate(PHASE_NAMES)
            },
        }
    lows, highs = merged.lows, merged.highs
    gaps = _gaps(merged.firsts, merged.lasts, window, threshold_ms)
    return {
        "t": t,
        "mean": [s / (c * SUM_SCALE) for s, c in zip(sums, counts, strict=True)],
        "min": list(lows),
        "max": list(highs),
        "count": counts,
        "gaps": gaps,
        "stats": {
            "min": min(lows),
            "max": max(highs),
            "mean": sum_all / (count_all * SUM_SCALE),
            "count": count_all,
        },
        "phases": {
            name: {
                "min": p_low[index],
                "max": p_high[index],
                "mean": p_sum[index] / (p_count[index] * SUM_SCALE) if p_count[index] else None,
                "count": p_count[index],
                "coverage": coverage(*phases[index], gaps),
            }
            for index, name in enumerate(PHASE_NAMES)
        },
    }


def _insights(
    metric: Metric,
    merged: MetricColumns,
    series: dict[str, Any],
    phases: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> dict[str, Any]:
    if metric.kind is MetricKind.CUMULATIVE:
        return cumulative_insights(series, phases=phases)
    return scalar_insights(
        metric,
        series,
        during=merged.during,
        after=merged.after,
        phases=phases,
        window=window,
        bucket_ms=bucket_ms,
    )


def _gaps(
    firsts: Sequence[int], lasts: Sequence[int], window: TelemetryWindow, threshold_ms: int
) -> list[dict[str, int]]:
    gaps: list[dict[str, int]] = []
    if firsts[0] - window.start_ms > threshold_ms:
        gaps.append({"start_ms": window.start_ms, "end_ms": firsts[0]})
    for index in range(1, len(firsts)):
        previous = lasts[index - 1]
        if firsts[index] - previous > threshold_ms:
            gaps.append({"start_ms": previous, "end_ms": firsts[index]})
    if window.end_ms - lasts[-1] > threshold_ms:
        gaps.append({"start_ms": lasts[-1], "end_ms": window.end_ms})
    return gaps
