"""What a session did to the body, per metric of a payload: baseline, change, peak, recovery and
alert episodes (scalar metrics), totals and rates (cumulative metrics).

Pure, and computed only from what the payload's assembly already holds: the series assembled
from the GROUP BY rows and, per bucket, the count and sum of its during and after samples. So
insights cost no second pass over raw samples, are cached and fresh exactly like the rest of the
payload, and a payload re-assembled from stored partial rows carries the same insights.

Definitions (the README's "Insights" section says the same for users, and
``tests/telemetry/insights_reference.py`` recomputes each one from raw samples):

``baseline``
    The before phase's mean: every sample in ``[window start, session start)``. Null with
    ``baseline_reason`` ``no_before_data`` when that phase holds no sample, or ``low_coverage``
    when its ``coverage`` (the payload's, DESIGN "Coverage is time") is below 0.5: a mean of a
    few minutes out of an hour is no resting value.
``during_mean``, ``delta``, ``delta_pct``
    The during phase's mean; ``delta = during_mean − baseline`` and
    ``delta_pct = delta / baseline × 100``, null when either side is null.
``peak``
    Among the buckets of the session, the mean of each bucket's *during* samples (a bucket that
    straddles the session end counts its during part only); the highest when ``delta ≥ 0``, the
    lowest when it is negative, the earliest on a tie. ``at_ms`` is the start of that bucket's
    during part (never before the session start), ``after_start_ms = at_ms − session start``.
    Null without a delta: without a baseline there is no direction to peak in.
``recovery_ms``
    Evaluated at the bucket ends τ after the session end E (only those ≤ the window end). The
    5-minute rolling mean at τ is the mean of the *after* samples in ``[τ − 5 min, τ)`` (none
    from during the session; undefined when there is none). Recovery is the first τ where
    (1) the rolling mean is defined and within the catalog tolerance of the baseline
    (``|mean − baseline| ≤ tolerance``), and (2) it stays there 5 minutes: every defined rolling
    mean at τ, τ + 1 bucket, …, τ + 5 min is within tolerance (a bucket end whose 5 minutes hold
    no sample is no evidence either way: a metric sampled every 10 minutes has such points
    without losing track), ``τ + 5 min`` is inside the window, and no gap of the metric overlaps
    ``[τ, τ + 5 min)`` (a watch taken off may not "stay" recovered). ``recovery_ms = τ − E``, a
    multiple of the bucket up to the offset of E in its bucket. Null with ``recovery_reason``:
    ``live`` (the session has not ended), ``no_baseline``, or ``not_within_window``.
``episodes``
    Per catalog alert rule, runs of consecutive non-empty buckets whose max (high rules) or min
    (low rules) crosses the threshold; an empty bucket inside a run does not end it (a sparse
    metric has empty buckets between its samples), a gap of the metric does. Each is
    ``{rule, level, start_ms, end_ms, extreme}``: the first bucket's start, the last bucket's end
    (at most the window end), and the most extreme bucket max (min) of the run. A stricter
    rule's episodes lie inside a milder one's. Sorted by start, then catalog rule order.

Cumulative metrics: ``during_total`` (the during phase's sum) and ``rate_per_min`` per phase:
the phase's sum divided by its length in minutes (null for a phase of no length, such as the
after phase of a live session).
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Mapping, Sequence

from vitalcast.catalog import AlertRule, Metric
from vitalcast.clock import MINUTE_MS
from vitalcast.json_types import JsonMapping, JsonObject
from vitalcast.telemetry.grid import TelemetryWindow

#: (count, sum) of one bucket's samples within one phase
Part = tuple[int, float]
#: (highest mean, its bucket), (lowest mean, its bucket) of the buckets' during parts
Peaks = tuple[tuple[float, int], tuple[float, int]]

#: the rolling mean's span, and how long it must stay within tolerance
ROLLING_MS = 5 * MINUTE_MS
HOLD_MS = 5 * MINUTE_MS
#: below this coverage of its phase, the before mean is no baseline
MIN_BASELINE_COVERAGE = 0.5


class BaselineReason(enum.StrEnum):
    """Why ``baseline`` is null."""

    #: no sample in the before phase
    NO_BEFORE_DATA = "no_before_data"
    #: the before phase's coverage is below 50 %
    LOW_COVERAGE = "low_coverage"


class RecoveryReason(enum.StrEnum):
    """Why ``recovery_ms`` is null."""

    #: the session is still running: there is no "after" yet
    LIVE = "live"
    #: nothing to recover to (``baseline`` is null)
    NO_BASELINE = "no_baseline"
    #: the rolling mean did not come back and stay within tolerance before the window ends
    NOT_WITHIN_WINDOW = "not_within_window"


def scalar_insights(
    metric: Metric,
    series: JsonMapping,
    *,
    peaks: Peaks | None,
    episodes: Sequence[JsonMapping],
    after: Mapping[int, Part],
    phases: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> JsonObject:
    """The insights of one scalar metric. ``series`` is its assembled series (``phases``,
    ``gaps``); ``peaks`` its ``peak_candidates``, ``episodes`` its ``episode_runs``; ``after``
    maps bucket numbers (from the window start) to that bucket's part in the after phase;
    ``phases`` are the ``[lo, hi)`` of before, during and after."""
    if metric.recovery_tolerance is None:
        raise ValueError(f"{metric.code} is not a scalar metric")
    baseline, baseline_reason = _baseline(series["phases"]["before"])
    during_mean = series["phases"]["during"]["mean"]
    delta = None if baseline is None or during_mean is None else during_mean - baseline
    recovery_ms, recovery_reason = _recovery(
        baseline,
        metric.recovery_tolerance,
        after,
        series["gaps"],
        phases=phases,
        window=window,
        bucket_ms=bucket_ms,
    )
    end = window.end_ms
    return {
        "baseline": baseline,
        "baseline_reason": baseline_reason,
        "during_mean": during_mean,
        "delta": delta,
        "delta_pct": None if delta is None or not baseline else delta / baseline * 100,
        "peak": _peak(
            peaks, delta, session_start_ms=phases[1][0], window=window, bucket_ms=bucket_ms
        ),
        "recovery_ms": recovery_ms,
        "recovery_reason": recovery_reason,
        # an episode ends at its last bucket's end, or at the window's end inside that bucket
        "episodes": [e if e["end_ms"] <= end else {**e, "end_ms": end} for e in episodes],
    }


def cumulative_insights(series: JsonMapping, *, phases: Sequence[tuple[int, int]]) -> JsonObject:
    """``during_total`` and ``rate_per_min`` per phase of one cumulative metric."""
    rates: dict[str, float | None] = {}
    for name, (lo, hi) in zip(("before", "during", "after"), phases, strict=True):
        total = series["phases"][name]["sum"]
        rates[name] = total / ((hi - lo) / MINUTE_MS) if hi > lo else None
    return {"during_total": series["phases"]["during"]["sum"], "rate_per_min": rates}


def _baseline(before: JsonMapping) -> tuple[float | None, str | None]:
    if not before["count"]:
        return None, BaselineReason.NO_BEFORE_DATA.value
    coverage = before.get("coverage")
    if coverage is None or coverage < MIN_BASELINE_COVERAGE:
        return None, BaselineReason.LOW_COVERAGE.value
    mean: float = before["mean"]
    return mean, None


def peak_candidates(during: Mapping[int, Part]) -> Peaks | None:
    """Among the buckets' during parts (bucket number → part), the highest and the lowest mean,
    each with the earliest bucket that has it; None without any during sample."""
    if not during:
        return None
    parts = sorted(during.items())
    means = [total / count for _bucket, (count, total) in parts]
    high, low = max(means), min(means)
    return (high, parts[means.index(high)][0]), (low, parts[means.index(low)][0])


def _peak(
    peaks: Peaks | None,
    delta: float | None,
    *,
    session_start_ms: int,
    window: TelemetryWindow,
    bucket_ms: int,
) -> JsonObject | None:
    if delta is None or peaks is None:
        return None
    best, bucket = peaks[0] if delta >= 0 else peaks[1]
    at_ms = max(window.start_ms + bucket * bucket_ms, session_start_ms)
    return {"value": best, "at_ms": at_ms, "after_start_ms": at_ms - session_start_ms}


def _recovery(
    baseline: float | None,
    tolerance: float,
    after: Mapping[int, Part],
    gaps: Sequence[Mapping[str, int]],
    *,
    phases: Sequence[tuple[int, int]],
    window: TelemetryWindow,
    bucket_ms: int,
) -> tuple[int | None, str | None]:
    if window.live:
        return None, RecoveryReason.LIVE.value
    if baseline is None:
        return None, RecoveryReason.NO_BASELINE.value
    session_end_ms, window_end_ms = phases[2]
    origin = window.start_ms
    span = max(1, ROLLING_MS // bucket_ms)
    hold = max(1, HOLD_MS // bucket_ms)
    # bucket numbers whose end τ satisfies session end < τ ≤ window end
    first = (session_end_ms - origin) // bucket_ms
    last = (window_end_ms - origin) // bucket_ms - 1
    # the after parts of buckets first - span + 1 … last, as counts and totals
    counts: list[int] = []
    totals: list[float] = []
    for bucket in range(first - span + 1, last + 1):
        part = after.get(bucket)
        counts.append(0 if part is None else part[0])
        totals.append(0.0 if part is None else part[1])
    # within[offset]: the rolling mean at the end of bucket first + offset (its span of buckets,
    # summed directly as defined) is within tolerance; None when no sample is in its 5 minutes
    within = [
        None
        if (count := sum(counts[offset : offset + span])) == 0
        else abs(sum(totals[offset : offset + span]) / count - baseline) <= tolerance
        for offset in range(last - first + 1)
    ]
    for offset in range(last - first - hold + 1):
        if within[offset] is not True or False in within[offset + 1 : offset + hold + 1]:
            continue
        tau = origin + (first + offset + 1) * bucket_ms
        if any(g["start_ms"] < tau + HOLD_MS and g["end_ms"] > tau for g in gaps):
            continue
        return tau - session_end_ms, None
    return None, RecoveryReason.NOT_WITHIN_WINDOW.value


def episode_runs(
    rules: Sequence[AlertRule],
    t: Sequence[int],
    lows: Sequence[float],
    highs: Sequence[float],
    gaps: Sequence[Mapping[str, int]],
    origin_ms: int,
    bucket_ms: int,
) -> list[JsonObject]:
    """The episodes of a series (``t``, its bucket ``lows`` and ``highs``, its ``gaps``), each
    ending at its last bucket's end: ``scalar_insights`` clips that to the window's end. Only
    gaps that end at a bucket of the series break runs, so the gap that ends at the window's
    end never matters here."""
    if not rules:
        return []
    # A gap ends at the first sample after it, so the series position of the bucket holding
    # that sample starts a new run.
    after_gap: set[int] = set()
    for gap in gaps:
        bucket_start = origin_ms + (gap["end_ms"] - origin_ms) // bucket_ms * bucket_ms
        position = bisect_left(t, bucket_start)
        if position < len(t) and t[position] == bucket_start:
            after_gap.add(position)
    episodes: list[JsonObject] = []
    for rule in rules:
        values = highs if rule.high else lows
        hits = rule.hits(values)
        if not hits:
            continue
        # positions in ``hits`` where a run starts: after a bucket that does not cross, or a gap
        if hits[-1] - hits[0] + 1 == len(hits) and not any(
            hits[0] < position <= hits[-1] for position in after_gap
        ):
            starts = [0]  # one unbroken run
        else:
            starts = [0] + [
                j for j in range(1, len(hits)) if hits[j] != hits[j - 1] + 1 or hits[j] in after_gap
            ]
        name, level, extreme = rule.rule, rule.level.value, max if rule.high else min
        for first, after_last in zip(starts, [*starts[1:], len(hits)], strict=True):
            a, b = hits[first], hits[after_last - 1]
            episodes.append(
                {
                    "rule": name,
                    "level": level,
                    "start_ms": t[a],
                    "end_ms": t[b] + bucket_ms,
                    "extreme": extreme(values[a : b + 1]),
                }
            )
    episodes.sort(key=lambda episode: episode["start_ms"])
    return episodes
