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

Each metric also carries its ``insights`` (``compute/insights.py``), computed here from the same
rows, so whoever assembles a payload from these rows gets them too.

Assembly has two stages. ``metric_series`` walks one metric's rows once and keeps everything
they decide alone (for a grid: the window's start and the bucket): the series, the gaps from the
window's start and between samples, stats, phase statistics, the peak candidates and the episode
runs. ``assemble_metrics`` adds what the window's end decides (the trailing gap, coverage,
episodes clipped to the end, rates) and is cheap. A live window's end moves on every update, but
a metric whose rows did not change keeps its ``MetricSeries``, so an incremental compute walks
only the rows of the metrics that changed, and a full compute goes through the very same code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from vitalcast.catalog import BY_CODE, Metric, MetricKind
from vitalcast.json_types import JsonObject
from vitalcast.telemetry.compute.insights import (
    Part,
    Peaks,
    cumulative_insights,
    episode_runs,
    peak_candidates,
    scalar_insights,
)
from vitalcast.telemetry.grid import TelemetryWindow

#: phase numbers as the aggregate query computes them
BEFORE, DURING, AFTER = 0, 1, 2
PHASE_NAMES = ("before", "during", "after")
#: the "phase" of samples at or after a live window's end: kept with the partials, never shown
AHEAD = 3
#: row sums are integers of values rounded to micro-units, far below any sensor's precision; a
#: (metric, bucket, phase) holds at most 9.2 × 10^12 units (2^63 micro-units)
SUM_SCALE = 1_000_000

# (metric, bucket, phase, count, sum in micro-units, min, max, first_ms, last_ms): a plain tuple
# (the hot loops index it), its positions named below
Row = tuple[str, int, int, int, int, float, float, int, int]
METRIC: Final = 0
BUCKET: Final = 1
PHASE: Final = 2
COUNT: Final = 3
SUM: Final = 4
LOW: Final = 5
HIGH: Final = 6
FIRST_MS: Final = 7
LAST_MS: Final = 8


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


def assemble_metrics(
    series: Mapping[str, MetricSeries],
    window: TelemetryWindow,
    bucket_ms: int,
    *,
    with_insights: bool = True,
) -> tuple[dict[str, JsonObject], int]:
    """The payload's ``metrics`` map (only metrics with samples) and the raw sample count, from
    each metric's series: only what the window's end moves (the trailing
    gap, coverage, clipped episodes, rates) is computed here, so an incremental compute runs it
    for every metric and walks the rows of the metrics it changed alone."""
    phases = phase_bounds(window)
    metrics: dict[str, JsonObject] = {}
    total = 0
    for code in sorted(series):
        one = series[code]
        if (one.origin_ms, one.bucket_ms) != (window.start_ms, bucket_ms):
            raise ValueError(f"the series of {code} belongs to another grid")
        metric = BY_CODE[code]
        payload = (
            _cumulative(one, phases, with_insights)
            if metric.kind is MetricKind.CUMULATIVE
            else _scalar(metric, one, phases, window, with_insights)
        )
        total += one.count
        metrics[code] = {
            "display_name": metric.display_name,
            "unit": metric.unit,
            "kind": metric.kind.value,
            **payload,
        }
    return metrics, total


@dataclass(frozen=True, slots=True)
class MetricSeries:
    """One metric's rows merged by bucket (the series) and by phase, and everything of its payload
    that follows from them, the window's start and the bucket alone. Built once per change of the
    metric's rows: an incremental compute hands the series of a metric whose rows did not change
    to the next assembly as it is, and only what the live window's end moves is computed again.
    Never mutated once built (payloads share its lists)."""

    code: str
    origin_ms: int
    bucket_ms: int
    t: list[int]
    #: the payload's series columns: mean, min, max, count (scalar) or sum, count (cumulative)
    columns: dict[str, list[Any]]  # Any: floats, ints and None (a bucket without a value)
    #: raw samples, and per phase (before, during, after) their count, sum, min and max
    count: int
    p_count: tuple[int, int, int]
    p_sum: tuple[int, int, int]
    p_low: tuple[float | None, float | None, float | None]
    p_high: tuple[float | None, float | None, float | None]
    #: scalar metrics: the series' min and max, its last sample, the gaps that the window's end
    #: does not move (from its start, between samples), and the insights' parts (see ``insights``)
    low: float | None = None
    high: float | None = None
    last_ms: int = 0
    fixed_gaps: list[dict[str, int]] = field(default_factory=list)
    after: dict[int, Part] = field(default_factory=dict)
    peaks: Peaks | None = None
    episodes: list[JsonObject] = field(default_factory=list)


def metric_series(
    code: str, rows: Iterable[Row], origin_ms: int, bucket_ms: int, *, with_insights: bool = True
) -> MetricSeries | None:
    """The series of one metric's rows, sorted by (bucket, phase); AHEAD rows are skipped (they
    lie beyond the window's end). None for a metric outside the catalog or without a row.
    ``with_insights=False`` leaves the insights' parts out (the benchmark of what they cost)."""
    metric = BY_CODE.get(code)
    if metric is None:
        return None
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
    if not buckets:
        return None
    t = [origin_ms + bucket * bucket_ms for bucket in buckets]
    by_phase = (
        (p_count[0], p_count[1], p_count[2]),
        (p_sum[0], p_sum[1], p_sum[2]),
        (p_low[0], p_low[1], p_low[2]),
        (p_high[0], p_high[1], p_high[2]),
    )
    if metric.kind is MetricKind.CUMULATIVE:
        columns: dict[str, list[Any]] = {  # Any: as MetricSeries.columns
            "sum": [s / SUM_SCALE for s in sums],
            "count": counts,
        }
        return MetricSeries(code, origin_ms, bucket_ms, t, columns, sum(p_count), *by_phase)
    columns = {
        "mean": [s / (c * SUM_SCALE) for s, c in zip(sums, counts, strict=True)],
        "min": lows,
        "max": highs,
        "count": counts,
    }
    gaps = _fixed_gaps(
        firsts, lasts, origin_ms, gap_threshold_ms(metric.gap_threshold_ms, bucket_ms)
    )
    return MetricSeries(
        code,
        origin_ms,
        bucket_ms,
        t,
        columns,
        sum(p_count),
        *by_phase,
        low=min(lows),
        high=max(highs),
        last_ms=lasts[-1],
        fixed_gaps=gaps,
        after=parts[AFTER],
        peaks=peak_candidates(parts[DURING]) if with_insights else None,
        episodes=episode_runs(metric.alert_rules, t, lows, highs, gaps, origin_ms, bucket_ms)
        if with_insights
        else [],
    )


def _cumulative(
    series: MetricSeries, phases: Sequence[tuple[int, int]], with_insights: bool
) -> JsonObject:
    payload: JsonObject = {
        "t": series.t,
        **series.columns,
        "gaps": [],
        "stats": {"sum": sum(series.p_sum) / SUM_SCALE, "count": series.count},
        "phases": {
            name: {"sum": series.p_sum[index] / SUM_SCALE, "count": series.p_count[index]}
            for index, name in enumerate(PHASE_NAMES)
        },
    }
    if with_insights:
        payload["insights"] = cumulative_insights(payload, phases=phases)
    return payload


def _scalar(
    metric: Metric,
    series: MetricSeries,
    phases: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    with_insights: bool,
) -> JsonObject:
    gaps = series.fixed_gaps
    if window.end_ms - series.last_ms > gap_threshold_ms(metric.gap_threshold_ms, series.bucket_ms):
        gaps = [*gaps, {"start_ms": series.last_ms, "end_ms": window.end_ms}]
    stats_phases = {}
    for index, name in enumerate(PHASE_NAMES):
        count, total = series.p_count[index], series.p_sum[index]
        stats_phases[name] = {
            "min": series.p_low[index],
            "max": series.p_high[index],
            "mean": total / (count * SUM_SCALE) if count else None,
            "count": count,
            "coverage": coverage(*phases[index], gaps),
        }
    payload: JsonObject = {
        "t": series.t,
        **series.columns,
        "gaps": gaps,
        "stats": {
            "min": series.low,
            "max": series.high,
            "mean": sum(series.p_sum) / (series.count * SUM_SCALE),
            "count": series.count,
        },
        "phases": stats_phases,
    }
    if with_insights:
        payload["insights"] = scalar_insights(
            metric,
            payload,
            peaks=series.peaks,
            episodes=series.episodes,
            after=series.after,
            phases=phases,
            window=window,
            bucket_ms=series.bucket_ms,
        )
    return payload


def _fixed_gaps(
    firsts: Sequence[int], lasts: Sequence[int], origin_ms: int, threshold_ms: int
) -> list[dict[str, int]]:
    """The gaps from the window's start to the first sample and between samples (the one from
    the last sample to the window's end is the assembly's: a live end moves it)."""
    gaps: list[dict[str, int]] = []
    if firsts[0] - origin_ms > threshold_ms:
        gaps.append({"start_ms": origin_ms, "end_ms": firsts[0]})
    for index in range(1, len(firsts)):
        previous = lasts[index - 1]
        if firsts[index] - previous > threshold_ms:
            gaps.append({"start_ms": previous, "end_ms": firsts[index]})
    return gaps
