"""Pure assembly of the payload's metric series from the rows of the one GROUP BY; no I/O.

Input rows are ``(metric, bucket, phase, count, sum, min, max, first_ms, last_ms)``, one per
(metric, bucket, phase) that holds at least one sample, in any order. A bucket
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

from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from vitalcast.catalog import BY_CODE, Metric, MetricKind
from vitalcast.telemetry.insights import Part, cumulative_insights, scalar_insights
from vitalcast.telemetry.models import TelemetryWindow

#: phase numbers as the aggregate query computes them
BEFORE, DURING, AFTER = 0, 1, 2
PHASE_NAMES = ("before", "during", "after")

# (metric, bucket, phase, count, sum, min, max, first_ms, last_ms)
Row = tuple[str, int, int, int, float, float, float, int, int]
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
    phases = phase_bounds(window)
    metrics: dict[str, dict[str, Any]] = {}
    total = 0
    for code, metric_rows in groupby(sorted(rows, key=_ORDER), key=itemgetter(0)):
        metric = BY_CODE.get(code)
        if metric is None:
            continue
        mine = list(metric_rows)
        series = _metric_series(
            mine,
            cumulative=metric.kind is MetricKind.CUMULATIVE,
            window=window,
            bucket_ms=bucket_ms,
            threshold_ms=gap_threshold_ms(metric.gap_threshold_ms, bucket_ms),
            phases=phases,
        )
        if with_insights:
            series["insights"] = _insights(metric, mine, series, phases, window, bucket_ms)
        total += series["stats"]["count"]
        metrics[code] = {
            "display_name": metric.display_name,
            "unit": metric.unit,
            "kind": metric.kind.value,
            **series,
        }
    return metrics, total


def _metric_series(
    rows: Sequence[Row],
    *,
    cumulative: bool,
    window: TelemetryWindow,
    bucket_ms: int,
    threshold_ms: int,
    phases: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    t: list[int] = []
    counts: list[int] = []
    sums: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    firsts: list[int] = []
    lasts: list[int] = []
    # per phase: count, sum, min, max
    p_count = [0, 0, 0]
    p_sum = [0.0, 0.0, 0.0]
    p_low: list[float | None] = [None, None, None]
    p_high: list[float | None] = [None, None, None]
    previous_bucket = -1
    for _code, bucket, phase, count, total, low, high, first, last in rows:
        total = float(total)
        low = float(low)
        high = float(high)
        p_count[phase] += count
        p_sum[phase] += total
        plow, phigh = p_low[phase], p_high[phase]
        p_low[phase] = low if plow is None or low < plow else plow
        p_high[phase] = high if phigh is None or high > phigh else phigh
        if bucket == previous_bucket:
            counts[-1] += count
            sums[-1] += total
            lows[-1] = min(lows[-1], low)
            highs[-1] = max(highs[-1], high)
            firsts[-1] = min(firsts[-1], first)
            lasts[-1] = max(lasts[-1], last)
            continue
        previous_bucket = bucket
        t.append(window.start_ms + bucket * bucket_ms)
        counts.append(count)
        sums.append(total)
        lows.append(low)
        highs.append(high)
        firsts.append(first)
        lasts.append(last)

    count_all = sum(p_count)
    sum_all = sum(p_sum)
    if cumulative:
        return {
            "t": t,
            "sum": sums,
            "count": counts,
            "gaps": [],
            "stats": {"sum": sum_all, "count": count_all},
            "phases": {
                name: {"sum": p_sum[index], "count": p_count[index]}
                for index, name in enumerate(PHASE_NAMES)
            },
        }
    gaps = _gaps(firsts, lasts, window, threshold_ms)
    return {
        "t": t,
        "mean": [s / c for s, c in zip(sums, counts, strict=True)],
        "min": lows,
        "max": highs,
        "count": counts,
        "gaps": gaps,
        "stats": {
            "min": min(lows),
            "max": max(highs),
            "mean": sum_all / count_all,
            "count": count_all,
        },
        "phases": {
            name: {
                "min": p_low[index],
                "max": p_high[index],
                "mean": p_sum[index] / p_count[index] if p_count[index] else None,
                "count": p_count[index],
                "coverage": coverage(*phases[index], gaps),
            }
            for index, name in enumerate(PHASE_NAMES)
        },
    }


def _insights(
    metric: Metric,
    rows: Sequence[Row],
    series: dict[str, Any],
    phases: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> dict[str, Any]:
    if metric.kind is MetricKind.CUMULATIVE:
        return cumulative_insights(series, phases=phases)
    # bucket number → (count, sum) of the bucket's samples in each phase (before: not needed)
    parts: tuple[dict[int, Part], ...] = ({}, {}, {})
    for row in rows:
        if row[2] != BEFORE:
            parts[row[2]][row[1]] = (row[3], float(row[4]))
    return scalar_insights(
        metric,
        series,
        during=parts[DURING],
        after=parts[AFTER],
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
